-- Why a refresh ran as it did when that was not the stream table's mode: a TopK whose first
-- rows had to be recomputed, an auto table that chose to recompute.
ALTER TABLE pgtrickle.refresh_history ADD COLUMN reason text;
