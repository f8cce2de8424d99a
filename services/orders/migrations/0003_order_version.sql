-- Changes to an order are optimistic (services/orders/store.py, save_changes):
-- a change reads the order without a lock, decides, and writes only if the
-- row's version is still the one it read; every write of the row moves the
-- version on.  Existing rows start at 0, which is as good a version as any.
-- A replica that predates this column would change orders without moving it,
-- so this is rolled out by restarting every replica, not side by side.
ALTER TABLE orders ADD COLUMN version integer NOT NULL DEFAULT 0;
