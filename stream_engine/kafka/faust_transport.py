"""faust's aiokafka transport, with the consumer's fetch wait taken from our settings.

faust-streaming builds its worker consumer with ``fetch_max_wait_ms=1500`` written into the
code. aiokafka keeps one fetch in flight per broker, and the broker holds a fetch for partitions
that have no new data for up to that long, so records arriving meanwhile on the other partitions
wait with it. Measured with the demo at 800 alerts/s: publish→decision p50 1,093 ms with faust's
1500 ms, 28 ms with 5 ms (whether the stall shows depends on timing: it hid on a fresh data
directory and appeared on an older one).
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


def transport_class(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """faust's aiokafka ``Transport`` whose worker consumer waits at most ``fetch_max_wait_ms``."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # faust passes no way to set it; AIOKafkaConsumer reads this attribute in start(),
            # when it builds its Fetcher (checked by tests/unit/test_faust_transport.py).
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
