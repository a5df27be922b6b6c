-- The changed rows a refresh found in its window before staging, whatever it then staged of
-- them (only those that can matter are): what `auto` knows when it decides, so what its
-- measured costs are per.
ALTER TABLE pgtrickle.refresh_history ADD COLUMN window_rows bigint;
