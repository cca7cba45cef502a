"""Prometheus metrics of docs/design.md 5.5 (process-wide, default registry)."""
from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("ms_events_received_total", "PBX events accepted", ["event_type"])
CALLS_CREATED = Counter("ms_calls_created_total", "Calls created in MoySklad")
MS_REQUESTS = Counter("ms_moysklad_requests_total", "MoySklad requests", ["api", "outcome"])
MS_LATENCY = Histogram("ms_moysklad_request_seconds", "MoySklad request latency", ["api"],
                       buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
JOB_RETRIES = Counter("ms_job_retries_total", "Job runs that failed and were rescheduled", ["kind"])
JOBS_DEAD = Counter("ms_jobs_dead_total", "Jobs that exhausted their attempts", ["kind"])
JOB_SECONDS = Histogram("ms_job_seconds", "Job run time", ["kind"])
CUSTOMERS_CREATED = Counter("ms_customers_created_total", "Counterparties created in MoySklad")
ORDERS_CREATED = Counter("ms_orders_created_total", "Customer orders created in MoySklad")
QUEUE_DEPTH = Gauge("ms_queue_depth", "Pending and running jobs")
QUEUE_OLDEST = Gauge("ms_queue_oldest_pending_seconds", "Age of the oldest pending job")
JOBS_DEAD_NOW = Gauge("ms_dead_jobs", "Jobs currently dead, waiting for a retry from the admin")
WORKERS_ALIVE = Gauge("ms_workers_alive", "Worker threads alive in this process")
CLICKS = Counter("ms_clicks_total", "Click-to-call requests by outcome (queued, repeat, refused)", ["outcome"])
CLICK_REFUSALS = Counter("ms_click_refusals_total", "Click-to-call requests refused by the toll-fraud guard",
                         ["reason"])
BREAKER_TRANSITIONS = Counter("ms_breaker_transitions_total", "MoySklad breakers opened and closed", ["api", "to"])
BREAKER_OPEN = Gauge("ms_breaker_open", "1 while MoySklad is unreachable (outage) or refuses the key (auth)",
                     ["enterprise", "api", "kind"])
BREAKER_WAITING = Gauge("ms_breaker_waiting_calls", "Calls waiting behind an open breaker", ["enterprise", "api"])
TASKS = Counter("ms_tasks_total", "Missed-call tasks opened and closed in MoySklad", ["action"])
PRUNED = Counter("ms_retention_deleted_total", "Rows deleted for being older than MS_RETENTION_DAYS", ["table"])
GC_FROZEN = Gauge("ms_gc_frozen_objects", "Objects built at startup, kept out of the garbage collector's walks")
