-- Changes to an order are optimistic (services/orders/store.py, save_changes):
-- a change reads the order without a lock, decides, and writes only if the
-- row's version is still the one it read; every write of the row moves the
-- version on.  Existing rows start at 0, which is as good a version as any.
ALTER TABLE orders ADD COLUMN version integer NOT NULL DEFAULT 0;

-- A replica that predates the column changes orders under a row lock without
-- moving the version; were it not moved for it, a newer replica's write
-- decided before that change would still find its version and overwrite it.
-- So an update that leaves the version as it was moves it here, and old and
-- new replicas can run side by side during a rolling upgrade (each pooled
-- connection of an old replica fails one change once, on its cached
-- ``SELECT o.*`` inside a transaction, so restart them soon).  The service's
-- own writes move it themselves, so for them the trigger's condition is false
-- and the function never runs.
CREATE FUNCTION orders_move_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_version_moves BEFORE UPDATE ON orders
    FOR EACH ROW WHEN (NEW.version = OLD.version) EXECUTE FUNCTION orders_move_version();
