"""Online state in Redis: the server tfrec starts, a guarded connection, shoppers' recent events, shared caches."""
