"""When and in what order stream tables refresh, and the refresh itself."""
