"""The compiler: a defining SELECT and catalog facts in, delta SQL out. Pure: no connections."""
