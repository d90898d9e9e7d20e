-- 0004_api_key_ids: every API key gets a record under a stable id (`k_` and 20 hex digits),
-- so that it can be listed, rotated and revoked (StateStore::put_api_key). `api_keys` stays
-- the index of the active keys' hashes (a rotated or revoked key's hash is deleted from it, so
-- a build that reads only `api_keys` refuses it too); its principal now names the key id.
CREATE TABLE api_key_records (
    franchise_id text COLLATE "C" NOT NULL,
    key_id       text COLLATE "C" NOT NULL,
    -- Fences writes (UPDATE ... WHERE version = $n): 1 when created, one more on each change.
    version      bigint NOT NULL CHECK (version >= 1),
    key_hash     text COLLATE "C" NOT NULL,
    body         bytea NOT NULL,
    PRIMARY KEY (franchise_id, key_id)
);

-- Keys stored before get their record under the id derived from their hash, as
-- loyalty_core::identity::legacy_api_key_id computes it (and the embedded and ScyllaDB stores
-- when they adopt theirs), and their principal its `key_id`.
WITH legacy AS (
    SELECT key_hash,
           convert_from(body, 'UTF8')::jsonb AS p,
           'k_' || left(encode(sha256(convert_to('loyalty-key-id:v1:' || key_hash, 'UTF8')), 'hex'), 20)
               AS key_id
    FROM api_keys
    WHERE NOT (convert_from(body, 'UTF8')::jsonb ? 'key_id')
      AND convert_from(body, 'UTF8')::jsonb ->> 'franchise_id' IS NOT NULL
), adopted AS (
    INSERT INTO api_key_records (franchise_id, key_id, version, key_hash, body)
    SELECT p ->> 'franchise_id', key_id, 1, key_hash,
           convert_to(jsonb_build_object(
               'id', key_id,
               'franchise_id', p -> 'franchise_id',
               'role', p -> 'role',
               'store_id', p -> 'store_id',
               'key_hash', key_hash,
               'prefix', 'lk_' || CASE p ->> 'role' WHEN 'hq_read_only' THEN 'hqro' ELSE p ->> 'role' END || '_',
               'created_at', (extract(epoch FROM now()) * 1000)::bigint,
               'rotated_at', NULL,
               'revoked_at', NULL,
               'version', 1)::text, 'UTF8')
    FROM legacy
    ON CONFLICT DO NOTHING
)
UPDATE api_keys AS k
SET body = convert_to((l.p || jsonb_build_object('key_id', l.key_id))::text, 'UTF8')
FROM legacy AS l
WHERE k.key_hash = l.key_hash;
