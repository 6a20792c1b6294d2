-- The fold version of the read model's rows: the latest migration marked "-- refold:"
-- that the gateway which folded them knew (see adapters/db.py). A gateway starting with
-- a later one folds the read model again from the streams, once (refold.py).
-- 0 here: rows folded before this table existed are older than every marked migration;
-- a read model that has folded nothing yet is stamped at the gateway's start instead.
CREATE TABLE read_model_fold (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO read_model_fold (version) VALUES (0);
