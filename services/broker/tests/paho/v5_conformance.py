"""MQTT 5 features of the Lentera broker, seen by an independent client (Eclipse Paho).

Usage: python3 v5_conformance.py PORT. Prints one line per check and exits non-zero on
the first failure. Driven by tests/paho_v5.rs.
"""
import queue
import sys
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
WAIT = 5
RUN = uuid.uuid4().hex[:8]


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def client(cid, will=None):
    """A connected MQTT 5 client whose messages and CONNACK land in queues."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{cid}-{RUN}", protocol=mqtt.MQTTv5)
    c.msgs, c.acks, c.connack = queue.Queue(), queue.Queue(), queue.Queue()
    c.on_connect = lambda cl, u, flags, rc, props: c.connack.put((rc, props))
    c.on_message = lambda cl, u, m: c.msgs.put(m)
    c.on_subscribe = lambda cl, u, mid, rcs, props: c.acks.put(rcs)
    c.on_publish = lambda cl, u, mid, rc, props: c.acks.put(rc)
    if will:
        c.will_set(*will)
    c.connect("127.0.0.1", PORT, keepalive=30, clean_start=True)
    c.loop_start()
    rc, props = c.connack.get(timeout=WAIT)
    check(not rc.is_failure, f"{cid}: CONNACK success")
    c.connack_props = props
    return c


def subscribe(c, topic, sub_id=None, **opts):
    props = None
    if sub_id is not None:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub_id
    c.subscribe(topic, options=SubscribeOptions(**opts), properties=props)
    return c.acks.get(timeout=WAIT)


def publish(c, topic, payload, props=None, retain=False):
    c.publish(topic, payload, qos=1, retain=retain, properties=props)
    rc = c.acks.get(timeout=WAIT)
    check(not rc.is_failure, f"PUBACK for {topic!r} {payload!r}: {rc}")


def prop(p, name, default=None):
    return getattr(p, name, default) if p is not None else default


sub = client("paho-sub")
cp = sub.connack_props
check(prop(cp, "TopicAliasMaximum", 0) > 0, "CONNACK announces Topic Alias Maximum > 0")
check(prop(cp, "SubscriptionIdentifierAvailable", 1) == 1, "CONNACK: subscription identifiers available")

rcs = subscribe(sub, "paho/#", sub_id=42, qos=1, noLocal=True, retainAsPublished=True)
check([r.value for r in rcs] == [1], f"SUBACK grants QoS 1: {rcs}")

pub = client("paho-pub")
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("z", "1"), ("a", "2"), ("z", "3")]
props.ContentType = "text/plain"
props.ResponseTopic = "paho/reply"
props.CorrelationData = b"\x00corr"
props.PayloadFormatIndicator = 1
props.MessageExpiryInterval = 60
props.TopicAlias = 1
publish(pub, "paho/t", b"one", props, retain=True)
alias_only = Properties(PacketTypes.PUBLISH)
alias_only.TopicAlias = 1
publish(pub, "", b"two", alias_only)

m = sub.msgs.get(timeout=WAIT)
p = m.properties
check((m.topic, m.payload) == ("paho/t", b"one"), f"first message arrives on its topic: {m.topic} {m.payload}")
check(m.retain, "[MQTT-3.3.1-13] Retain As Published keeps RETAIN=1")
check(prop(p, "UserProperty") == [("z", "1"), ("a", "2"), ("z", "3")], f"[MQTT-3.3.2-17/-18] user properties in order: {prop(p, 'UserProperty')}")
check(prop(p, "ContentType") == "text/plain", "[MQTT-3.3.2-20] content type")
check(prop(p, "ResponseTopic") == "paho/reply", "[MQTT-3.3.2-15] response topic")
check(prop(p, "CorrelationData") == b"\x00corr", "[MQTT-3.3.2-16] correlation data")
check(prop(p, "PayloadFormatIndicator") == 1, "[MQTT-3.3.2-4] payload format indicator")
check(0 < prop(p, "MessageExpiryInterval", 0) <= 60, f"[MQTT-3.3.2-6] expiry interval <= 60: {prop(p, 'MessageExpiryInterval')}")
check(prop(p, "SubscriptionIdentifier") == [42], f"[MQTT-3.3.4-3] subscription identifier: {prop(p, 'SubscriptionIdentifier')}")
check(prop(p, "TopicAlias") is None, "no outbound topic alias")
m = sub.msgs.get(timeout=WAIT)
check((m.topic, m.payload) == ("paho/t", b"two"), f"inbound topic alias resolved: {m.topic!r} {m.payload}")

# [MQTT-3.8.3-3] No Local: our own publication is not echoed; the marker comes next.
publish(sub, "paho/t", b"self")
publish(pub, "paho/t", b"marker")
m = sub.msgs.get(timeout=WAIT)
check(m.payload == b"marker", f"[MQTT-3.8.3-3] no local: next is {m.payload}")

# MQTT 5 §3.14.2.1: DISCONNECT 0x04 publishes the will.
w = client("paho-will", will=("paho/will", b"gone", 1, False))
w.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
m = sub.msgs.get(timeout=WAIT)
check((m.topic, m.payload) == ("paho/will", b"gone"), f"DISCONNECT 0x04 publishes the will: {m.topic}")

for c in (sub, pub, w):
    c.loop_stop()
print("all checks passed", flush=True)
