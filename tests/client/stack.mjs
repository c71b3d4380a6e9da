// Starts the real binaries as processes for the Node and browser tests:
// chat-core on its embedded default (an SQLite file and a development JWT
// secret, both in a fresh temporary directory per call of `stack()`) and
// gateways in front of it, which a test may kill and start again on the
// same port.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const target = process.env.CARGO_TARGET_DIR || resolve(import.meta.dirname, "../../target");
/** The path of a built binary of the workspace. */
export const bin = (name) => join(target, "debug", name);

/** Starts `command` and resolves once it logs its address after `key=`. */
function start(command, env, cwd, key) {
  const child = spawn(command, [], { cwd, env: { PATH: process.env.PATH, ...env } });
  return new Promise((resolveStart, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`${command} did not start:\n${log}`)), 30000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.length > 200000) log = log.slice(-100000);
      const match = log.match(new RegExp(`${key}=([0-9.:]+)`));
      if (match) {
        clearTimeout(timer);
        resolveStart({ child, addr: match[1] });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} exited (${code}):\n${log}`));
    });
  });
}

/** Resolves when `child` has exited. */
function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolveExit) => child.once("exit", () => resolveExit()));
}

/**
 * chat-core on a database of its own (with `env`, extra settings such as
 * `PRESENCE_GRACE_SECONDS`), and a way to start gateways in front of it.
 * Everything started is stopped by `t.after`.
 */
export async function stack(t, { env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "chat-client-"));
  const token = (sub, { ttl = 3600, role } = {}) => {
    const args = ["token", "--sub", sub, "--ttl", String(ttl)];
    if (role) args.push("--role", role);
    return execFileSync(bin("chat-core"), args, { cwd: dir }).toString().trim();
  };
  token("setup"); // creates the development secret
  const secret = readFileSync(join(dir, "data/jwt-secret"), "utf8").trim();
  const core = await start(bin("chat-core"), {
    CHAT_CORE_GRPC_ADDR: "127.0.0.1:0", CHAT_CORE_HTTP_ADDR: "127.0.0.1:0", ...env,
  }, dir, "grpc");
  const children = new Set([core.child]);
  t.after(async () => {
    for (const child of children) child.kill("SIGKILL");
    await Promise.all([...children].map(exited));
  });

  /** A gateway in front of chat-core; `addr` to take a given address (a restart). */
  async function gateway(addr = "127.0.0.1:0") {
    let lastError;
    // A port just given up may take a moment to be free again.
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        const started = await start(bin("chat-gateway"), {
          JWT_SECRET: secret, CHAT_CORE_URL: `http://${core.addr}`, GATEWAY_ADDR: addr,
        }, dir, "addr");
        children.add(started.child);
        return {
          addr: started.addr,
          url: `http://${started.addr}`,
          /** Kills the gateway at once (no graceful close for its sockets). */
          async kill() {
            started.child.kill("SIGKILL");
            await exited(started.child);
            children.delete(started.child);
          },
        };
      } catch (error) {
        lastError = error;
        if (!/binding GATEWAY_ADDR/.test(error.message)) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw lastError;
  }

  /** Calls the REST API as `userToken`. */
  async function api(base, userToken, method, path, body) {
    const response = await fetch(`${base}/api/chat${path}`, {
      method,
      headers: { authorization: `Bearer ${userToken}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, json: text ? JSON.parse(text) : null };
  }

  return { dir, secret, token, gateway, api };
}

/** Resolves when `predicate()` holds, polling; rejects with `what` after `ms`. */
export async function until(predicate, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
