"""A paho subscriber that records what arrives, for tests that watch a broker's traffic."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from s4edge.testing.mosquitto import Mosquitto


class Listener:
    """A paho subscriber recording what arrives on ``topic_filter``, with its topic."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("no SUBACK")

    def publish(self, topic_name: str, payload: bytes) -> None:
        self.client.publish(topic_name, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
