#!/usr/bin/env python3
"""Talks to a running chat-core the way an internal service in another
language would: it discovers the API through server reflection (no .proto
files needed), creates a thread, sends a message and lists the messages.

    pip install grpcio grpcio-reflection protobuf
    scripts/grpc-smoke.py 127.0.0.1:50051 "$(target/debug/chat-core token --sub alice)"
"""

import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**request):
        return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]))))

    services = [s.name for s in ask(list_services="").list_services_response.service]
    pool = descriptor_pool.DescriptorPool()
    seen = set()
    files = ask(file_containing_symbol="chat.v1.ChatService").file_descriptor_response.file_descriptor_proto
    pending = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files]
    while pending:
        progress = False
        for proto in list(pending):
            if all(dep in seen for dep in proto.dependency):
                pool.Add(proto)
                seen.add(proto.name)
                pending.remove(proto)
                progress = True
        if not progress:
            for proto in pending:
                for dep in proto.dependency:
                    if dep not in seen:
                        for raw in ask(file_by_filename=dep).file_descriptor_response.file_descriptor_proto:
                            extra = descriptor_pb2.FileDescriptorProto.FromString(raw)
                            if extra.name not in seen and all(p.name != extra.name for p in pending):
                                pending.append(extra)
    return services, pool


def call(channel, pool, token, method, body):
    service = pool.FindServiceByName("chat.v1.ChatService")
    rpc = service.methods_by_name[method]
    request_class = message_factory.GetMessageClass(rpc.input_type)
    response_class = message_factory.GetMessageClass(rpc.output_type)
    invoke = channel.unary_unary(
        f"/chat.v1.ChatService/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    request = json_format.ParseDict(body, request_class())
    response = invoke(request, metadata=[("authorization", f"Bearer {token}")])
    return json_format.MessageToDict(response)


def main():
    address, token = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(address) as channel:
        services, pool = reflect(channel)
        print("services:", ", ".join(sorted(services)))
        thread = call(channel, pool, token, "CreateThread", {"participants": ["bob"], "jobId": "job-smoke"})
        thread_id = thread["thread"]["id"]
        print("thread:", thread_id, "created" if thread.get("created") else "existing")
        sent = call(channel, pool, token, "SendMessage", {"threadId": thread_id, "content": "hello from Python"})
        print("sent seq:", sent["message"]["seq"])
        page = call(channel, pool, token, "ListMessages", {"threadId": thread_id})
        for message in page.get("messages", []):
            print(f"  #{message['seq']} {message.get('senderId')}: {message['content']}")


if __name__ == "__main__":
    main()
