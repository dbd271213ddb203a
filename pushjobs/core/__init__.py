"""Pure state machines: (event, now) -> actions. No zmq, flask, peewee or gevent."""
