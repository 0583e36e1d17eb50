// The sauce stage, in JavaScript: sets the pizza's `sauce` and keeps every other field.
//
// It does what functions/sauce (Rust) does, so either can run as the `sauce` stage and be
// swapped for the other live. Built with jco (componentize-js) by dev/build-stages.sh against
// the `pizza:stage/topping` world of wit/stage.wit.

import { get as configGet } from 'pizza:stage/config@0.1.0';
import { log } from 'pizza:stage/log@0.1.0';
import { getRandomU64 } from 'wasi:random/random@0.2.12';

// The original service's list (repeats weigh a choice more) and the article's `bbq`.
// `choices` in pipeline.toml (comma-separated) replaces it.
const CHOICES = ['regular', 'light', 'extra', 'none', 'alfredo', 'regular', 'light', 'extra', 'alfredo', 'bbq'];

// An error that retrying cannot fix: jco turns a thrown object into `stage-error`.
function refused(message) {
  return { message, retryable: false };
}

export function transform(event) {
  let pizza;
  try {
    pizza = JSON.parse(event);
  } catch (err) {
    throw refused(`input is not valid JSON: ${err.message}`);
  }
  if (pizza === null || typeof pizza !== 'object' || Array.isArray(pizza)) {
    throw refused(`expected a JSON object, got ${Array.isArray(pizza) ? 'an array' : typeof pizza}`);
  }
  const configured = configGet('choices');
  let options = CHOICES;
  if (configured !== undefined) {
    options = configured.split(',').map((c) => c.trim()).filter((c) => c.length > 0);
    if (options.length === 0) throw refused(`config \`choices\` names no option: ${JSON.stringify(configured)}`);
  }
  // Draw from wasi:random on every call: it is the host's generator (seeded under --seed).
  // Math.random would be fixed when the component was built.
  pizza.sauce = options[Number(getRandomU64() % BigInt(options.length))];
  log('debug', `sauce: ${pizza.sauce}`);
  return JSON.stringify(pizza);
}
