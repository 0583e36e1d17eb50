"""The cheese stage, in Python: sets the pizza's `cheese` and keeps every other field.

It does what functions/cheese (Rust) does, so either can run as the `cheese` stage and be
swapped for the other live. Built with componentize-py by dev/build-stages.sh; the generated
`wit_world` module is the `pizza:stage/topping` world of wit/stage.wit.
"""

import json
import random

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, log
from wit_world.imports.log import Level
from wit_world.imports.types import StageError

# The original service's list; repeats weigh a choice more. `choices` in pipeline.toml
# (comma-separated) replaces it.
CHOICES = ["extra", "none", "three cheese", "goat cheese", "extra", "three cheese", "goat cheese"]


def refused(message: str) -> Err:
    """An error that retrying cannot fix: the event or the settings are the problem."""
    return Err(StageError(message=message, retryable=False))


class WitWorld(wit_world.WitWorld):
    def transform(self, event: str) -> str:
        try:
            pizza = json.loads(event)
        except ValueError as err:
            raise refused(f"input is not valid JSON: {err}")
        if not isinstance(pizza, dict):
            raise refused(f"expected a JSON object, got {type(pizza).__name__}")
        configured = config.get("choices")
        options = CHOICES
        if configured is not None:
            options = [c.strip() for c in configured.split(",") if c.strip()]
            if not options:
                raise refused(f"config `choices` names no option: {configured!r}")
        # `random` is seeded from wasi:random in every fresh instance, so it follows the
        # host's --seed like the Rust stages do.
        pizza["cheese"] = random.choice(options)
        log.log(Level.DEBUG, f"cheese: {pizza['cheese']}")
        return json.dumps(pizza, separators=(",", ":"), ensure_ascii=False)
