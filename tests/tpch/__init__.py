"""The TPC-H correctness gate: schema, data, the 22 queries and a concurrent workload."""
