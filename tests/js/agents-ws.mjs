// The OpenAI Agents SDK for JavaScript (@openai/agents-realtime) in Node over
// its WebSocket transport, pointed at voxgate: `node agents-ws.mjs URL KEY PCM`
// (URL: voxgate's ws://…/v1/realtime?model=…, KEY: a voxgate project key, PCM: a
// file of 24 kHz PCM16 mono speech asking for the weather, ending in silence).
// Driven by tests/sdk/test_agents_node.py, which asserts on the one JSON
// object this script prints to stdout:
//   {"tool": {"heard", "calls", "reply"}, "interrupt": {"response_status",
//    "last_assistant", "truncated", "audio_interrupted"},
//    "unparsed": [[type, issue], …], "history": [[type, role or tool name, status], …],
//    "errors"}
//
// 1. The spoken request, streamed with session.sendAudio() as a microphone
//    would: the provider's turn detection ends the turn, the request names the
//    tool, the SDK calls it (execute), sends its output back, and the spoken
//    reply's transcript carries the result.
// 2. A user message with a long reply, interrupted by session.interrupt()
//    150 ms after its first audio: the SDK cancels the response and sends
//    conversation.item.truncate; the history's last assistant item must be
//    `incomplete` with a transcript, and the truncate must succeed.
import { readFile } from 'node:fs/promises';
import { OpenAIRealtimeWebSocket, RealtimeAgent, RealtimeSession, tool } from '@openai/agents-realtime';
// The SDK's own schema of server events (not exported by the package's index): an event
// that fails it is silently treated as unknown by the SDK, so the script reports it.
import { realtimeServerEventSchema } from './node_modules/@openai/agents-realtime/dist/openaiRealtimeEvents.mjs';

const [url, apiKey, pcmPath] = process.argv.slice(2);
if (!url || !apiKey || !pcmPath) {
  console.error('usage: node agents-ws.mjs URL KEY PCM');
  process.exit(2);
}
const TOOL_RESULT = 'sunny and 21 degrees';
const STEP_TIMEOUT_MS = 15000 * Number(process.env.VOXGATE_TEST_SLOW || 1);

const calls = [];
const getWeather = tool({
  name: 'get_weather',
  description: 'Look up the weather forecast for a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
    additionalProperties: false,
  },
  strict: true,
  execute: async ({ city }) => {
    calls.push(city);
    return `${TOOL_RESULT} in ${city}`;
  },
});

const agent = new RealtimeAgent({
  name: 'Assistant',
  instructions: 'You are a helpful voice assistant.',
  tools: [getWeather],
});
const session = new RealtimeSession(agent, {
  transport: new OpenAIRealtimeWebSocket(),
  model: 'gpt-realtime',
  config: {
    outputModalities: ['audio'],
    audio: {
      input: { format: { type: 'audio/pcm', rate: 24000 }, transcription: { model: 'gpt-4o-mini-transcribe' } },
      // the slowest speech (0.25 is the API's minimum): the long reply of step 2 takes
      // longer to synthesise than the 150 ms the script waits before interrupting it
      output: { format: { type: 'audio/pcm', rate: 24000 }, voice: 'ash', speed: 0.25 },
    },
  },
});

const errors = [];
const raw = []; // server events, as the transport received them
const unparsed = []; // [type, first issue] of server events the SDK's schema refuses
let history = [];
const waiters = [];
session.on('error', (e) => errors.push(String(e?.error?.message ?? e?.error?.error?.message ?? JSON.stringify(e))));
session.on('transport_event', (event) => {
  raw.push(event);
  const parsed = realtimeServerEventSchema.safeParse(event);
  if (!parsed.success) unparsed.push([event.type, JSON.stringify(parsed.error.issues[0])]);
  if (event.type === 'error') errors.push(JSON.stringify(event.error ?? event));
  check();
});
session.on('history_updated', (h) => {
  history = h;
  check();
});
let audioInterrupted = 0;
session.on('audio_interrupted', () => {
  audioInterrupted += 1;
});

function check() {
  for (const w of [...waiters]) {
    if (w.test()) {
      waiters.splice(waiters.indexOf(w), 1);
      clearTimeout(w.timer);
      w.resolve();
    }
  }
}

/** Resolves once test() holds (checked on every event), rejects after STEP_TIMEOUT_MS. */
function until(what, test) {
  return new Promise((resolve, reject) => {
    if (test()) return resolve();
    const w = { test, resolve };
    w.timer = setTimeout(() => {
      waiters.splice(waiters.indexOf(w), 1);
      reject(new Error(`timed out waiting for ${what}; events: ${raw.map((e) => e.type).join(' ')}`));
    }, STEP_TIMEOUT_MS);
    waiters.push(w);
  });
}

const assistantItems = () => history.filter((i) => i.type === 'message' && i.role === 'assistant');
const transcriptOf = (item) => (item?.content ?? []).map((c) => c.transcript ?? c.text ?? '').join('');
const doneResponses = () => raw.filter((e) => e.type === 'response.done');

try {
  await session.connect({ apiKey, url });

  // 1. the tool call, end to end, from speech: 20 ms chunks at 4x real time
  const pcm = await readFile(pcmPath);
  const chunk = 24000 * 2 / 50;
  for (let off = 0; off < pcm.length; off += chunk) {
    const part = pcm.subarray(off, off + chunk);
    session.sendAudio(part.buffer.slice(part.byteOffset, part.byteOffset + part.length));
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await until('the spoken reply carrying the tool result', () =>
    assistantItems().some((i) => i.status === 'completed' && transcriptOf(i).includes(TOOL_RESULT)));
  const toolReply = transcriptOf(assistantItems().at(-1));

  // 2. interrupt a long reply mid-way
  const before = doneResponses().length;
  const audioBefore = raw.filter((e) => e.type === 'response.output_audio.delta').length;
  session.sendMessage('Please tell me a long story about a lighthouse keeper and the storm that came in from the sea at night');
  await until('the first audio of the long reply', () =>
    raw.filter((e) => e.type === 'response.output_audio.delta').length > audioBefore);
  await new Promise((resolve) => setTimeout(resolve, 150));
  session.interrupt();
  await until('response.done of the interrupted reply', () => doneResponses().length > before);
  await until('conversation.item.truncated', () => raw.some((e) => e.type === 'conversation.item.truncated'));
  // the SDK retrieves the truncated item; wait for the retrieved copy to reach the history
  await until('conversation.item.retrieved', () => raw.some((e) => e.type === 'conversation.item.retrieved'
    && e.item?.id === raw.find((t) => t.type === 'conversation.item.truncated').item_id));
  await new Promise((resolve) => setImmediate(resolve));

  const last = assistantItems().at(-1);
  const truncated = raw.find((e) => e.type === 'conversation.item.truncated');
  const result = {
    tool: {
      heard: raw.filter((e) => e.type === 'conversation.item.input_audio_transcription.completed')
        .map((e) => e.transcript),
      calls,
      reply: toolReply,
    },
    interrupt: {
      response_status: doneResponses().at(-1).response.status,
      last_assistant: { item_id: last.itemId, status: last.status, transcript: transcriptOf(last) },
      truncated: { item_id: truncated.item_id, content_index: truncated.content_index,
                   audio_end_ms: truncated.audio_end_ms },
      audio_interrupted: audioInterrupted,
    },
    unparsed,
    history: history.map((i) => [i.type, i.role ?? i.name ?? null, i.status ?? null]),
    errors,
  };
  console.log(JSON.stringify(result));
} catch (err) {
  console.log(JSON.stringify({ failed: String(err?.stack ?? err), errors }));
  process.exitCode = 1;
} finally {
  session.close();
}
