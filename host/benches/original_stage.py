"""One stage of the original demo, in its own shape and language: a Python service that polls
one record, adds its topping and produces the pizza (confluent-kafka, default settings, the
consumer committing what it polled). pipeline_throughput runs four of these, one process each,
for its "one process per stage (Python)" row.

Usage: original_stage.py BOOTSTRAP STAGE RULE CHOICES INPUT OUTPUT GROUP
(RULE: "one" picks one of the comma-separated CHOICES, "some" the meats/veggies rule.)
"""

import json
import random
import sys

from confluent_kafka import Consumer, Producer


def pick_some(options):
    """The original meats/veggies rule: 0 to 4 draws, distinct ones joined with " & "."""
    picked = []
    for _ in range(random.randint(0, 4)):
        item = random.choice(options)
        if item not in picked:
            picked.append(item)
    return " & ".join(picked) if picked else "none"


def main(bootstrap, stage, rule, choices, source, target, group):
    options = choices.split(",")
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": bootstrap})
    while True:
        event = consumer.poll(1.0)
        if event is None:
            continue
        if event.error():
            print(f"{stage}: {event.error()}", file=sys.stderr)
            continue
        pizza = json.loads(event.value())
        pizza[stage] = random.choice(options) if rule == "one" else pick_some(options)
        while True:
            try:
                producer.produce(target, key=event.key(), value=json.dumps(pizza))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
