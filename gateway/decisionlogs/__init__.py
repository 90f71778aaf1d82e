"""Decision-log shipping: the local hash-chained audit log, read behind the writer with a durable cursor, shipped
at least once to a central sink in OPA's decision-log format (gzip-compressed JSON arrays POSTed in batches).
``config`` is ``[decision_logs]``; ``cursor`` reads the log across rotations and remembers where it stopped;
``events`` turns a record into an OPA event; ``shipper`` is the lifecycle (batching, retries, drain at stop)."""
