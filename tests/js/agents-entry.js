// Entry point for tests/js/dist/agents-realtime.js (built by scripts/js-bundle.sh).
// Exposes the pieces of the OpenAI Agents SDK (realtime) that a test page needs on
// window.AgentsRealtime, the way the SDK's WebRTC transport guide uses them:
//   new AgentsRealtime.RealtimeSession(new AgentsRealtime.RealtimeAgent({...}),
//       {transport: new AgentsRealtime.OpenAIRealtimeWebRTC({baseUrl, mediaStream, audioElement})})
import {
  RealtimeAgent,
  RealtimeSession,
  OpenAIRealtimeWebRTC,
  OpenAIRealtimeWebSocket,
  DEFAULT_OPENAI_REALTIME_MODEL,
  DEFAULT_OPENAI_REALTIME_SESSION_CONFIG,
  tool,
  utils,
  UserError,
} from '@openai/agents-realtime';

window.AgentsRealtime = {
  RealtimeAgent,
  RealtimeSession,
  OpenAIRealtimeWebRTC,
  OpenAIRealtimeWebSocket,
  DEFAULT_OPENAI_REALTIME_MODEL,
  DEFAULT_OPENAI_REALTIME_SESSION_CONFIG,
  tool,
  utils,
  UserError,
};
