"""Tools for trying pgtrickle out and for testing it: a private PostgreSQL cluster, a sample
shop with a writer of random transactions, and the demo that puts them together."""
