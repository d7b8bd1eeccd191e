// The scenarios both clients run: tests/client/scenarios.json (see its "about").
// One test per scenario, named after it: tests/client/test_js_client.py checks
// that every scenario of the file ran and passed here.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import test from 'node:test';
import {
  backoffDelay, connectionEnding, DedupWindow, drainHint, Subscriptions,
} from '../wsnode.js';

const file = process.env.WSNODE_SCENARIOS
  ?? new URL('../../../tests/client/scenarios.json', import.meta.url);
const scenarios = JSON.parse(readFileSync(file, 'utf8'));
const KINDS = ['dedup', 'backoff', 'close', 'topics'];

function close(actual, expected, what) {
  assert.ok(Math.abs(actual - expected) < 1e-6, `${what}: ${actual} is not ${expected}`);
}

function runDedup(scenario) {
  if (scenario.refused) {
    assert.throws(() => new DedupWindow(scenario.size), RangeError);
    return;
  }
  const window = new DedupWindow(scenario.size);
  scenario.steps.forEach((step, i) => {
    const at = `step ${i} ${JSON.stringify(step)}`;
    if ('check' in step) assert.equal(window.check(step.check), step.verdict, at);
    else if ('handled' in step) window.handled(step.handled);
    else if ('forget' in step) window.forget(step.forget);
    else if ('has' in step) assert.equal(window.has(step.has), step.expect, at);
    else if ('length' in step) assert.equal(window.length, step.length, at);
    else assert.fail(`unknown step ${at}`);
  });
}

function runBackoff(scenario) {
  const options = { baseMs: scenario.baseMs, maxMs: scenario.capMs };
  if (scenario.refused) {
    assert.throws(() => backoffDelay(0, options, () => 0.5), RangeError);
    return;
  }
  for (const [attempt, delayMs] of scenario.delays) {
    close(backoffDelay(attempt, options, () => scenario.random), delayMs, `attempt ${attempt}`);
  }
}

function runClose(scenario) {
  const hint = 'reconnect' in scenario ? drainHint(scenario.reconnect) : null;
  const ending = connectionEnding(scenario.code, scenario.reason, hint);
  assert.deepEqual({ reason: ending.reason, code: ending.code }, scenario.reported);
  const then = ending.final ? 'stop' : ending.drainDelayMs !== null ? 'drain' : 'backoff';
  assert.equal(then, scenario.then);
  if (then === 'drain') close(ending.drainDelayMs, scenario.delayMs, 'drain delay');
}

function runTopics(scenario) {
  const wanted = new Subscriptions();
  scenario.steps.forEach((step, i) => {
    const at = `step ${i} ${JSON.stringify(step)}`;
    if ('add' in step && step.refused) assert.throws(() => wanted.add(step.add), TypeError, at);
    else if ('add' in step) assert.equal(wanted.add(step.add), step.new, at);
    else if ('remove' in step) assert.equal(wanted.remove(step.remove), step.was, at);
    else if ('has' in step) assert.equal(wanted.has(step.has), step.expect, at);
    else if ('topics' in step) assert.deepEqual(wanted.topics, step.topics, at);
    else if ('length' in step) assert.equal(wanted.length, step.length, at);
    else assert.fail(`unknown step ${at}`);
  });
}

const run = { dedup: runDedup, backoff: runBackoff, close: runClose, topics: runTopics };

test('the scenario file has only kinds this suite knows', () => {
  assert.deepEqual(Object.keys(scenarios).filter((k) => k !== 'about').sort(), [...KINDS].sort());
});

for (const kind of KINDS) {
  for (const scenario of scenarios[kind]) {
    test(`${kind}: ${scenario.name}`, () => run[kind](scenario));
  }
}
