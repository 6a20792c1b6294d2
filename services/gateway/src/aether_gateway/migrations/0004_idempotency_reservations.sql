-- Idempotency keys are reserved when a key's first request arrives, not when it has been
-- answered: a reserved key has an owner (the request running) and a lease, and no answer
-- yet; copies of the request wait for the answer instead of running the route again.
-- A lease that runs out (its gateway died mid-request) lets the next copy take over.

ALTER TABLE idempotency_keys
    ALTER COLUMN status_code DROP NOT NULL,
    ALTER COLUMN headers DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN owner         text,
    ADD COLUMN lease_until   timestamptz,
    ADD COLUMN completed_at  timestamptz;

UPDATE idempotency_keys SET completed_at = created_at;

ALTER TABLE idempotency_keys
    ADD CONSTRAINT idempotency_keys_state_check CHECK (
        CASE WHEN completed_at IS NULL
            THEN owner IS NOT NULL AND lease_until IS NOT NULL
            ELSE status_code IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL
        END
    );
