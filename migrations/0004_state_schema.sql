-- Hidden tables that a stream table's maintenance keeps beside it (the aggregate of every
-- group under a TopK: dvm/kept.py), created and dropped with the stream table.
CREATE SCHEMA IF NOT EXISTS pgtrickle_state;
