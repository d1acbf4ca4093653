-- Shared rates as a generic cell rate algorithm (GCRA): one row per rate, holding its
-- theoretical arrival time (microseconds since the Unix epoch), the time of the next
-- free place. Reserving k places advances it by k emission intervals in one atomic
-- upsert, so every replica draws from one evenly spaced sequence of places and no
-- one-second interval, aligned or not, holds more than the rate (fixed windows allowed
-- twice the rate across a window boundary).
DROP TABLE rate_slots;

CREATE TABLE rate_gcra (
    bucket  TEXT    PRIMARY KEY,
    tat_us  BIGINT  NOT NULL
);
