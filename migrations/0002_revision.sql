-- Every change of a stream table's declaration (a re-created plan, a new schedule) bumps its
-- revision: a refresh compares it with the plan it holds and reloads an outdated one.
ALTER TABLE pgtrickle.stream_tables ADD COLUMN revision integer NOT NULL DEFAULT 1;
