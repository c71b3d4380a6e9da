-- The search vocabulary: every word the text index holds, so that a
-- query's last word, a prefix, can be looked up here and asked of the index
-- as the whole words it stands for (an index prefix match first gathers
-- every message holding any such word, which for a common word is slow).
-- chat-core adds each new word in the transaction that stores it; words
-- are never removed. Byte order ("C"), so a prefix is a range of the key.
CREATE TABLE search_words (
    word text COLLATE "C" PRIMARY KEY
);

-- The words of the messages stored so far (not the member marks, which
-- begin with '~' and are never searched for as words).
INSERT INTO search_words (word)
SELECT DISTINCT s.lexeme
FROM messages m, unnest(m.search) AS s(lexeme, positions, weights)
WHERE left(s.lexeme, 1) <> '~';
