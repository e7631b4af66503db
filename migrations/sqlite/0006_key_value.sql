-- Key-value data of HTTP functions (Spin's key-value interface). A
-- namespace is one function's and owner's store; `size` is the bytes of
-- the key and the value, summed for the namespace's quota.
CREATE TABLE key_value (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
