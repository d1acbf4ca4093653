-- When the payment behind a converting purchase was refunded in full: its revenue is
-- taken back from the economics once (the column is the guard).
ALTER TABLE conversions ADD COLUMN refunded_at BIGINT;
