// The demo page: log in, then chat in a room. Everything it needs is the
// tessera client (tessera.js, built from clients/js) and same-origin calls
// to auth-service's API, so it runs wherever it is served beside /v1/
// (auth-service's STATIC_DIR, or the compose proxy).
//
// The session cookie is HttpOnly: this script never sees it. It asks
// GET /v1/me whether it is logged in, and the client mints a ticket with
// POST /v1/tickets (the browser adds the cookie) for every connection.
import { connect } from './tessera.js';

const $ = (id) => document.getElementById(id);
const testid = (id) => document.querySelector(`[data-testid="${id}"]`);

const ui = {
  state: testid('connection-state'),
  node: testid('node'),
  who: $('who'),
  logout: $('logout'),
  error: $('error'),
  login: $('login'),
  room: $('room'),
  join: $('join'),
  channel: $('channel'),
  current: $('current'),
  messages: $('messages'),
  presence: $('presence'),
  send: $('send'),
  text: $('text'),
};

/** The logged-in user ({id, username}), the client, and the room's channel. */
let me = null;
let client = null;
let room = null;

// --- Screens ---------------------------------------------------------------------

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

/**
 * The connection state as the page shows it: `connected`, `connecting…`,
 * or `offline` with why. (Never the word "disconnected": a test waiting for
 * text that includes "connected" must not be fooled by it.)
 */
function showState(state, detail = '') {
  ui.state.dataset.state = state;
  const text = { connected: 'connected', connecting: 'connecting…', disconnected: 'offline' }[state];
  ui.state.textContent = detail ? `${text} — ${detail}` : text;
  if (state !== 'connected') ui.node.textContent = '–';
}

function showLogin() {
  ui.login.hidden = false;
  ui.room.hidden = true;
  ui.logout.hidden = true;
  ui.who.textContent = '';
  ui.login.elements.username.focus();
}

function showRoom() {
  ui.login.hidden = true;
  ui.room.hidden = false;
  ui.logout.hidden = false;
  ui.who.textContent = me.username;
  ui.text.focus();
}

// --- Session -------------------------------------------------------------------------

/** A same-origin API call; resolves with the response and its JSON body (if any). */
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const json = await response.json().catch(() => null);
  return { response, json };
}

async function boot() {
  showState('disconnected');
  try {
    const { response, json } = await api('GET', '/v1/me');
    if (response.ok) {
      me = json;
      return start();
    }
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
  }
  showLogin();
}

ui.login.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.login.elements;
  const { response, json } = await api('POST', '/v1/login', {
    username: form.username.value.trim(),
    password: form.password.value,
  });
  if (!response.ok) {
    showError(response.status === 401 ? 'Wrong username or password.' : (json?.error?.message ?? `login failed (${response.status})`));
    return;
  }
  form.password.value = '';
  me = json.user;
  showError('');
  start();
});

ui.logout.addEventListener('click', async () => {
  // This tab's socket closes normally; then auth-service revokes the session
  // everywhere, and every node closes the sockets of other tabs sharing it
  // with 4003 (which they show).
  const ending = client;
  stop('logged out');
  await ending?.disconnect();
  await api('POST', '/v1/logout');
});

/** Connects and joins the room in the form. */
function start() {
  showRoom();
  const current = connect(); // tickets: POST /v1/tickets with the cookie; the URL: the ticket's ws_url
  client = current;
  // A client this page has let go of (logout) reports nothing more.
  current.on('state', (state) => client === current && showState(state));
  current.on('connected', ({ node }) => {
    ui.node.textContent = node;
    showError('');
  });
  current.on('disconnected', (info) => {
    if (client !== current) return;
    if (info.reconnect) {
      const why = info.code ? `lost (${info.code})` : info.reason;
      showState('connecting', `${why}, retrying in ${(info.delay / 1000).toFixed(1)} s`);
    } else if (info.error) {
      // Stopped by the server or the ticket endpoint: 4003 (logout, revoked),
      // or no ticket without a session (401).
      const why = info.error.code === 'revoked' ? `logged out (${info.code})` : info.error.code === 'logged_out' ? 'logged out' : info.error.message;
      stop(why);
      showError(`Disconnected: ${why}. Log in again to continue.`);
    }
  });
  room = null;
  join(ui.channel.value);
}

/** Ends the session on this page (the client is already stopping or stopped). */
function stop(why) {
  client = null;
  me = null;
  room = null;
  showState('disconnected', why);
  ui.messages.replaceChildren();
  ui.presence.replaceChildren();
  showLogin();
}

// --- Room ------------------------------------------------------------------------------

/** `lobby` means `public:lobby`; a full channel name is taken as it is. */
function channelOf(name) {
  const trimmed = name.trim();
  return trimmed.includes(':') ? trimmed : `public:${trimmed}`;
}

function join(name) {
  const channel = channelOf(name);
  if (!client || channel === room) return;
  if (room) client.unsubscribe(room).catch(() => {});
  room = channel;
  ui.current.textContent = channel;
  ui.messages.replaceChildren();
  ui.presence.replaceChildren();
  client
    .subscribe(channel, {
      message: (data, message) => addMessage(data, message.from),
      join: () => refreshPresence(channel),
      leave: () => refreshPresence(channel),
      // (Re)subscribed, possibly on another node: who is here now.
      state: (state) => state === 'subscribed' && refreshPresence(channel),
      resync: ({ reason }) =>
        addNotice(
          reason === 'no_position'
            ? 'Reconnected; messages sent while offline may be missing.'
            : 'Some messages could not be recovered.',
        ),
    })
    .catch((e) => {
      showError(`cannot join ${channel}: ${e.message}`);
      if (room === channel) room = null;
    });
}

ui.join.addEventListener('submit', (event) => {
  event.preventDefault();
  join(ui.channel.value);
});

ui.send.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !client || !room) return;
  ui.text.value = '';
  // Shown when the node delivers it back, like everyone else's: once, in
  // the order the channel has. While reconnecting it waits in the client's
  // queue. The author shown is the message's `from`, which the server
  // stamps: a page cannot claim to be someone else.
  client.publish(room, { text }).catch((e) => showError(`not sent: ${e.message}`));
});

function addMessage(data, from) {
  const item = document.createElement('li');
  item.dataset.testid = 'message';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date().toTimeString().slice(0, 5);
  const author = document.createElement('span');
  author.className = 'author';
  const text = document.createElement('span');
  if (data && typeof data === 'object' && typeof data.text === 'string') {
    author.textContent = from?.username ?? '?';
    text.textContent = data.text;
  } else {
    text.textContent = JSON.stringify(data);
  }
  item.append(time, author, text);
  append(item);
}

function addNotice(message) {
  const item = document.createElement('li');
  item.className = 'notice';
  item.textContent = message;
  append(item);
}

function append(item) {
  const list = ui.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function refreshPresence(channel) {
  if (!client || client.state !== 'connected' || channel !== room) return;
  try {
    const members = await client.presence(channel);
    if (channel !== room) return;
    ui.presence.replaceChildren(
      ...members
        .map((m) => m.user.username)
        .sort()
        .map((name) => {
          const item = document.createElement('li');
          item.textContent = name;
          return item;
        }),
    );
  } catch {
    // the next join, leave or resubscription refreshes it
  }
}

boot();
