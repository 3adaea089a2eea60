"""jetsaga: workers and a client for durable sagas on NATS JetStream.

```python
from jetsaga import StepError, TaskContext, Worker

worker = Worker("calendar", concurrency=16)

@worker.handler("add_event")
async def add_event(ctx: TaskContext, input: dict) -> dict:
    return {"event_id": f"evt-{ctx.idempotency_key}"}

asyncio.run(worker.run(nats_url="nats://127.0.0.1:4222"))
```
"""

from .client import Client, Saga, SagaSummary, Started, Step
from .connection import NatsOptions
from .errors import EngineError, StepError, WorkerError
from .outcome import Outcome
from .task import Task, TaskContext
from .worker import Worker

__all__ = [
    "Client",
    "EngineError",
    "NatsOptions",
    "Outcome",
    "Saga",
    "SagaSummary",
    "Started",
    "Step",
    "StepError",
    "Task",
    "TaskContext",
    "Worker",
    "WorkerError",
]

__version__ = "0.1.0"
