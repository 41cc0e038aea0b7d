// The observer page: draws the snapshots the server streams (/api/events), and sends the
// three mutations with the token. No framework, no build step, no external resource.
// Text from the host (names, states, errors) only ever goes in through textContent.
'use strict';

(() => {
  const TOKEN_KEY = 'graft-observer-token';
  const PHASES = ['loading', 'before_suspend', 'instruction', 'suspending', 'migrating', 'resuming', 'after_commit'];
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let latest = null;
  let busy = false;
  let selected = null;
  let panelTimer = null;
  // Per actor: the last `messages_handled` and when; the rate computed from them.
  const counts = new Map();
  const rates = new Map();
  // What each part was last drawn from: a part is redrawn only when that changes (no
  // flicker, and a button under the pointer stays the same element).
  const drawn = { tree: '', releases: '', timeline: '' };
  function unchanged(part, inputs) {
    const key = JSON.stringify(inputs);
    if (drawn[part] === key) return true;
    drawn[part] = key;
    return false;
  }

  // The token may come in the fragment (#token=…), which browsers never send to servers.
  const fromFragment = /(?:^#|&)token=([0-9a-fA-F]+)/.exec(location.hash);
  if (fromFragment) {
    token = fromFragment[1];
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, '', location.pathname + location.search);
  }

  const $ = (id) => document.getElementById(id);

  function element(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text !== undefined) node.textContent = String(options.text);
    if (options.title) node.title = options.title;
    for (const [key, value] of Object.entries(options.data || {})) {
      if (value !== undefined && value !== null) node.dataset[key] = String(value);
    }
    for (const child of children) if (child) node.appendChild(child);
    return node;
  }

  function duration(us) {
    if (us === null || us === undefined) return '—';
    if (us < 1000) return `${us} µs`;
    if (us < 1000000) return `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;
    return `${(us / 1000000).toFixed(2)} s`;
  }

  function setConnection(state, text) {
    const node = $('connection');
    node.dataset.state = state;
    node.textContent = text;
  }

  function showToken() {
    const state = $('token-state');
    state.dataset.state = token ? 'set' : 'absent';
    state.textContent = token ? 'token set: actions enabled' : 'read only (no token)';
    $('token-input').value = '';
  }

  function message(text, outcome) {
    const node = $('message');
    node.textContent = text;
    node.dataset.outcome = outcome || '';
  }

  // ---- the tree -------------------------------------------------------------------------

  function actorKey(node) {
    return node.name || node.id;
  }

  function updateRates(node, now) {
    if (node.supervisor) {
      (node.children || []).forEach((child) => updateRates(child, now));
      return;
    }
    const key = actorKey(node);
    if (typeof node.messages_handled !== 'number') {
      rates.delete(key);
      return;
    }
    const previous = counts.get(key);
    if (previous && now > previous.at) {
      const seconds = (now - previous.at) / 1000;
      const handled = node.messages_handled - previous.handled;
      if (seconds >= 0.2) {
        rates.set(key, handled >= 0 ? handled / seconds : 0);
        counts.set(key, { handled: node.messages_handled, at: now });
      }
    } else {
      counts.set(key, { handled: node.messages_handled, at: now });
    }
  }

  // Nested lists; the depth indents the names only, so the columns stay aligned.
  function renderNode(node, depth = 0) {
    const indent = (child) => {
      child.style.paddingLeft = `${depth * 16}px`;
      return child;
    };
    if (node.supervisor) {
      const counts = node.counts ? `${node.counts.active}/${node.counts.specs} active` : (node.state || '');
      const label = indent(element('span', { className: 'label' }, [
        element('span', { text: node.id }),
        element('span', { className: 'subtle', text: `supervisor ${counts}` }),
      ]));
      const list = element('ul', {}, (node.children || []).map((child) => renderNode(child, depth + 1)));
      return element('li', { className: 'supervisor', data: { supervisor: node.id } }, [label, list]);
    }
    const key = actorKey(node);
    const code = node.plugin ? `${node.plugin}@${node.version || '?'}` : (node.code || '—');
    const rate = rateText(key);
    const row = element('div', { className: 'row' }, [
      indent(element('span', { className: 'name', text: node.id === key ? key : `${node.id} (${key})` })),
      element('span', { className: 'badge status', text: node.state, data: { state: node.state } }),
      element('span', { className: 'code', text: code }),
      element('span', { className: 'number mailbox', text: node.mailbox ?? '—', title: `high-water ${node.mailbox_high_water ?? '—'}` }),
      element('span', { className: 'number rate', text: rate }),
    ]);
    const item = element('li', {
      className: `actor${selected === key ? ' selected' : ''}`,
      data: { actor: key, child: node.id, state: node.state, version: node.version },
    }, [row]);
    row.addEventListener('click', () => select(key));
    return item;
  }

  function rateText(key) {
    return rates.has(key) ? rates.get(key).toFixed(rates.get(key) < 10 ? 1 : 0) : '—';
  }

  // What the tree's elements are made from, without the figures that change with traffic.
  function shapeOf(node) {
    if (node.supervisor) {
      return [node.id, node.state, node.counts, (node.children || []).map(shapeOf)];
    }
    return [actorKey(node), node.id, node.state, node.plugin, node.version, node.code];
  }

  // The figures (mailbox, rate) of rows already drawn, updated in place.
  function updateFigures(node) {
    if (node.supervisor) {
      (node.children || []).forEach(updateFigures);
      return;
    }
    const key = actorKey(node);
    const item = [...document.querySelectorAll('#tree li.actor')].find((row) => row.dataset.actor === key);
    if (!item) return;
    const mailbox = item.querySelector('.mailbox');
    mailbox.textContent = node.mailbox ?? '—';
    mailbox.title = `high-water ${node.mailbox_high_water ?? '—'}`;
    item.querySelector('.rate').textContent = rateText(key);
  }

  // The tree is redrawn only when its shape changes (an actor started, stopped, upgraded,
  // selected); figures change in place, so a row under the pointer stays the same element.
  function renderTree(status) {
    $('current-release').textContent = `release ${status.release}${status.install_in_progress ? ' (installing…)' : ''}`;
    if (unchanged('tree', [shapeOf(status.tree), status.release, status.install_in_progress, selected])) {
      updateFigures(status.tree);
      return;
    }
    $('tree').replaceChildren(element('ul', {}, [renderNode(status.tree)]));
  }

  // ---- the actor panel ------------------------------------------------------------------

  async function refreshPanel() {
    if (!selected) return;
    const name = selected;
    try {
      const response = await fetch(`/api/actors/${encodeURIComponent(name)}`);
      const body = await response.json();
      if (selected !== name) return;
      if (!response.ok) {
        $('actor-state').textContent = body.error ? body.error.message : response.statusText;
        return;
      }
      $('actor-state').textContent = body.state !== undefined
        ? JSON.stringify(body.state, null, 2)
        : `unavailable: ${body.state_error}`;
      const exits = body.recent_exits || [];
      $('actor-exits').replaceChildren(...(exits.length
        ? exits.slice().reverse().map((exit) => element('li', {
          text: `${new Date(exit.at_unix_ms).toLocaleTimeString()} ${exit.reason}`,
          data: { reason: exit.reason },
        }))
        : [element('li', { className: 'subtle', text: 'none recorded' })]));
    } catch (error) {
      $('actor-state').textContent = `could not reach the host: ${error}`;
    }
  }

  function select(name) {
    selected = name;
    $('actor-panel').hidden = false;
    $('actor-panel').dataset.actor = name;
    $('actor-title').textContent = name;
    $('actor-state').textContent = 'asking…';
    $('actor-exits').replaceChildren();
    if (latest) renderTree(latest.status);
    refreshPanel();
    clearInterval(panelTimer);
    panelTimer = setInterval(refreshPanel, 2000);
  }

  // ---- releases and actions -------------------------------------------------------------

  function renderReleases(status) {
    const installing = status.install_in_progress || busy;
    if (unchanged('releases', [status.releases, installing, Boolean(token)])) return;
    const rows = status.releases.map((release) => {
      const install = element('button', { className: 'install', text: release.running ? 'Running' : 'Install', data: { action: 'install', version: release.version } });
      install.disabled = !token || installing || release.running;
      install.addEventListener('click', () => mutate(`/api/install/${encodeURIComponent(release.version)}`, `install ${release.version}`));
      const permanent = element('button', { className: 'make-permanent secondary', text: 'Make permanent', data: { action: 'make-permanent', version: release.version } });
      permanent.disabled = !token || installing || release.status !== 'current';
      permanent.addEventListener('click', () => mutate(`/api/make-permanent/${encodeURIComponent(release.version)}`, `make ${release.version} permanent`));
      return element('tr', { data: { release: release.version, status: release.status, running: release.running } }, [
        element('td', { text: release.name }),
        element('td', { className: 'code', text: release.version }),
        element('td', {}, [element('span', { className: 'badge release-status', text: release.status + (release.running ? ' · running' : ''), data: { status: release.status } })]),
        element('td', { className: 'actions' }, [install, permanent]),
      ]);
    });
    $('releases').tBodies[0].replaceChildren(...rows);
    $('rollback').disabled = !token || installing;
  }

  function renderActivity(activity) {
    const node = $('activity');
    if (!activity) {
      node.textContent = '';
      return;
    }
    const state = activity.running ? 'running' : (activity.error ? 'failed' : 'done');
    const last = activity.progress.length ? `: ${activity.progress[activity.progress.length - 1]}` : '';
    node.dataset.state = state;
    node.textContent = `last action from this page: ${activity.operation} (${state})${activity.running ? last : ''}`;
  }

  async function mutate(path, label) {
    if (!token) {
      message('set the token first (graft start printed it)', 'error');
      return;
    }
    busy = true;
    if (latest) renderReleases(latest.status);
    message(`${label} …`, '');
    try {
      const response = await fetch(path, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        const text = body.error ? body.error.message : response.statusText;
        message(`${label} failed (${response.status}): ${text}`, 'error');
      } else if (body.to) {
        message(`${label}: done, ${body.from} → ${body.to} in ${duration(body.total_us)}, ${body.actors_migrated} actors migrated, longest pause ${duration(body.longest_pause_us)}`, 'ok');
      } else {
        message(`${label}: done`, 'ok');
      }
    } catch (error) {
      message(`${label}: could not reach the host: ${error}`, 'error');
    } finally {
      busy = false;
      if (latest) renderReleases(latest.status);
    }
  }

  // ---- the timeline ---------------------------------------------------------------------

  function phaseClass(name) {
    return PHASES.includes(name) ? `phase-${name}` : 'phase-other';
  }

  function renderTimeline(upgrades) {
    if (unchanged('timeline', [upgrades])) return;
    const timeline = $('timeline');
    if (!upgrades || upgrades.length === 0) {
      timeline.replaceChildren(element('p', { className: 'subtle empty', text: 'no upgrade yet' }));
      return;
    }
    const seen = new Set();
    const items = upgrades.slice().reverse().map((upgrade) => {
      const total = Math.max(upgrade.total_us || 0, 1);
      const bar = element('div', { className: 'bar' }, (upgrade.phases || []).map((phase) => {
        seen.add(phase.name);
        const segment = element('span', {
          className: `phase ${phaseClass(phase.name)}`,
          title: `${phase.name}: ${duration(phase.duration_us)}`,
          data: { phase: phase.name },
        });
        segment.style.width = `${Math.max(0.5, (100 * phase.duration_us) / total)}%`;
        return segment;
      }));
      const lost = String(upgrade.lost);
      const when = new Date(upgrade.started_unix_ms).toLocaleTimeString();
      return element('div', {
        className: 'upgrade',
        data: { kind: upgrade.kind, from: upgrade.from, to: upgrade.to, outcome: upgrade.outcome, lost },
      }, [
        element('div', { className: 'title' }, [
          element('span', { text: `${upgrade.kind} ${upgrade.from || '?'} → ${upgrade.to || '?'}` }),
          element('span', { className: 'subtle', text: `${upgrade.outcome.replace('_', ' ')} · ${duration(upgrade.total_us)} · ${when}` }),
        ]),
        bar,
        element('div', { className: 'facts' }, [
          element('span', { className: 'pause', text: `longest pause ${duration(upgrade.longest_pause_us)}` }),
          element('span', { className: 'migrated', text: `${upgrade.actors_migrated} actors migrated` }),
          element('span', { className: 'lost', text: `lost ${lost}`, data: { lost } }),
          upgrade.error ? element('span', { className: 'error', text: upgrade.error }) : null,
        ]),
      ]);
    });
    const legend = element('div', { className: 'legend' }, [...seen].map((name) => {
      const swatch = element('span', { className: `swatch ${phaseClass(name)}` });
      return element('span', {}, [swatch, document.createTextNode(name)]);
    }));
    timeline.replaceChildren(...items, legend);
  }

  // ---- the stream -----------------------------------------------------------------------

  function render(snapshot) {
    latest = snapshot;
    const host = snapshot.host;
    $('host-info').textContent = `graft ${host.graft_version} · pid ${host.pid} · ${host.root}`;
    updateRates(snapshot.status.tree, host.now_unix_ms);
    renderTree(snapshot.status);
    renderReleases(snapshot.status);
    renderActivity(snapshot.activity);
    renderTimeline(snapshot.upgrades);
    document.body.dataset.release = snapshot.status.release;
  }

  function connect() {
    const source = new EventSource('/api/events');
    source.addEventListener('snapshot', (event) => {
      setConnection('live', 'live');
      try {
        render(JSON.parse(event.data));
      } catch (error) {
        message(`could not draw the snapshot: ${error}`, 'error');
      }
    });
    source.addEventListener('error', () => setConnection('reconnecting', 'reconnecting…'));
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (value) {
        token = value;
        sessionStorage.setItem(TOKEN_KEY, token);
      }
      showToken();
      if (latest) renderReleases(latest.status);
    });
    $('token-forget').addEventListener('click', () => {
      token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      showToken();
      if (latest) renderReleases(latest.status);
    });
    $('rollback').addEventListener('click', () => mutate('/api/rollback', 'rollback'));
    $('actor-close').addEventListener('click', () => {
      selected = null;
      clearInterval(panelTimer);
      $('actor-panel').hidden = true;
      if (latest) renderTree(latest.status);
    });
    showToken();
    connect();
  });
})();
