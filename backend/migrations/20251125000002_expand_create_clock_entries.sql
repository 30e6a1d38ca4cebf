-- Clock-in/clock-out intervals. An entry with clock_out IS NULL is "open": the user
-- is currently clocked in.
CREATE TABLE clock_entries (
    id        BIGSERIAL   PRIMARY KEY,
    user_id   BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    clock_in  TIMESTAMPTZ NOT NULL DEFAULT now(),
    clock_out TIMESTAMPTZ,
    CONSTRAINT clock_entries_out_after_in CHECK (clock_out IS NULL OR clock_out >= clock_in)
);

-- At most one open entry per user, enforced by the database so that concurrent
-- clock-in requests cannot both succeed.
CREATE UNIQUE INDEX clock_entries_one_open_per_user ON clock_entries (user_id) WHERE clock_out IS NULL;

-- History queries filter by user and time range.
CREATE INDEX clock_entries_user_clock_in ON clock_entries (user_id, clock_in);
