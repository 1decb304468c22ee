"""Publishing: durable outbox (outbox.py) -> MQTT (mqtt.py); settings.py holds the values,
broker.py an in-process amqtt broker for the demo.  Import the submodules directly."""
