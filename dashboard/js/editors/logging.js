// The logging editor: access log, the app's log files, and one sink. The form shows the
// sink fields that matter for the chosen type; the others are left out of the document
// but keep their values in the form, so switching the type back loses nothing.

import { h } from '../dom.js';
import { control, field, put, rowList } from './form.js';
import { editorShell } from './shell.js';

export function loggingEditor(service) {
  const ed = editorShell({
    id: 'logging',
    title: 'Logging',
    path: `/services/${encodeURIComponent(service)}/policies/logging`,
    kindLabel: 'logging',
  });
  const example = { accessLog: { enabled: true, sampleRate: 1.0, format: 'json' }, sink: { type: 'stdout' } };
  let doc = null;
  const enabled = control('accessLog.enabled', { type: 'checkbox' });
  const sampleRate = control('accessLog.sampleRate', { type: 'number', step: 'any', min: '0', max: '1', placeholder: '1' });
  const format = control('accessLog.format', { tag: 'select', options: ['json', 'common'] });
  const redact = control('accessLog.redactHeaders', { type: 'text', placeholder: 'authorization, cookie' });
  const appLogs = rowList(ed, 'app log', (l, i) => {
    const mk = (name, attrs, value) => control(`appLogs[${i}].${name}`, attrs, value);
    const inputs = {
      path: mk('path', { type: 'text', placeholder: '/var/log/app/*.log' }, l.path),
      parser: mk('parser', { tag: 'select', options: ['plain', 'json', 'regex'] }, l.parser || 'plain'),
      pattern: mk('pattern', { type: 'text', placeholder: '(?P<level>\\w+) (?P<msg>.*)' }, l.pattern),
      multilineStart: mk('multilineStart', { type: 'text', placeholder: '^\\d{4}-' }, l.multilineStart),
    };
    const row = h(
      'div',
      { class: 'rule', style: '--cols: 4' },
      field('Path (glob)', inputs.path),
      field('Parser', inputs.parser),
      field('Pattern (regex parser)', inputs.pattern),
      field('Multiline start (regex)', inputs.multilineStart),
    );
    return { inputs, row };
  });
  const sinkType = control('sink.type', { tag: 'select', options: ['stdout', 'file', 'http'] });
  const sinkPath = control('sink.path', { type: 'text', placeholder: 'ship.ndjson (under the sidecar dir OUTRIDER_SINK_DIR)' });
  const sinkUrl = control('sink.url', { type: 'url', placeholder: 'http://collector:9880/ingest' });
  const sinkFormat = control('sink.format', {
    tag: 'select',
    options: [['', 'default (ndjson)'], 'ndjson', 'elasticsearch-bulk', 'loki'],
  });
  const batchSize = control('sink.batchSize', { type: 'number', step: '1', min: '1', placeholder: '500' });
  const flushInterval = control('sink.flushInterval', { type: 'text', placeholder: '1s' });
  const compression = control('sink.compression', { tag: 'select', options: ['none', 'gzip'] });
  const only = { path: ['file'], url: ['http'], format: ['http'], compression: ['http'] };
  const sinkFields = {
    path: field('File path', sinkPath),
    url: field('URL', sinkUrl),
    format: field('Format', sinkFormat),
    compression: field('Compression', compression),
  };
  const showSinkFields = () => {
    for (const [k, types] of Object.entries(only)) sinkFields[k].hidden = !types.includes(sinkType.value);
  };
  sinkType.addEventListener('change', showSinkFields);

  ed.fromDoc = (d) => {
    doc = d || example;
    const a = doc.accessLog || {};
    enabled.checked = Boolean(a.enabled);
    sampleRate.value = a.sampleRate ?? '';
    format.value = a.format || 'json';
    redact.value = (a.redactHeaders || []).join(', ');
    appLogs.reset(doc.appLogs);
    const s = doc.sink || {};
    sinkType.value = s.type || 'stdout';
    // A type-specific field absent from the document keeps what the form held, so
    // switching the type in the raw view and back does not wipe it.
    if (s.path !== undefined || sinkType.value === 'file') sinkPath.value = s.path ?? '';
    if (s.url !== undefined || sinkType.value === 'http') sinkUrl.value = s.url ?? '';
    if (s.format !== undefined || sinkType.value === 'http') sinkFormat.value = s.format ?? '';
    compression.value = s.compression || 'none';
    batchSize.value = s.batchSize ?? '';
    flushInterval.value = s.flushInterval ?? '';
    showSinkFields();
  };
  ed.toDoc = () => {
    const d = JSON.parse(JSON.stringify(doc || example));
    const a = { ...(d.accessLog || {}), enabled: enabled.checked, format: format.value };
    put(a, 'sampleRate', sampleRate.value, Number);
    const headers = redact.value.split(',').map((x) => x.trim()).filter(Boolean);
    if (headers.length) a.redactHeaders = headers;
    else delete a.redactHeaders;
    d.accessLog = a;
    const logs = appLogs.rows.map(({ orig, inputs }) => {
      // The path is required: an empty one is sent so the server names the field.
      const l = { ...orig, path: inputs.path.value.trim(), parser: inputs.parser.value };
      put(l, 'pattern', inputs.pattern.value);
      put(l, 'multilineStart', inputs.multilineStart.value);
      return l;
    });
    if (logs.length) d.appLogs = logs;
    else delete d.appLogs;
    const s = { ...(d.sink || {}), type: sinkType.value };
    const values = { path: sinkPath.value, url: sinkUrl.value, format: sinkFormat.value, compression: compression.value };
    for (const [k, types] of Object.entries(only)) {
      if (types.includes(s.type)) put(s, k, values[k]);
      else delete s[k];
    }
    if (s.compression === 'none') delete s.compression;
    put(s, 'batchSize', batchSize.value, Number);
    put(s, 'flushInterval', flushInterval.value);
    d.sink = s;
    return d;
  };
  ed.form.append(
    h(
      'fieldset',
      {},
      h('legend', { text: 'Access log' }),
      h(
        'div',
        { class: 'rule', style: '--cols: 4' },
        field('Enabled', enabled),
        field('Sample rate (0 to 1)', sampleRate),
        field('Format', format),
        field('Redacted headers (comma-separated)', redact),
      ),
    ),
    h(
      'fieldset',
      {},
      h('legend', { text: 'App log files' }),
      appLogs.list,
      h('button', { type: 'button', class: 'secondary', text: 'Add app log', onclick: () => appLogs.add() }),
    ),
    h(
      'fieldset',
      {},
      h('legend', { text: 'Sink' }),
      h(
        'div',
        { class: 'rule', style: '--cols: 7' },
        field('Type', sinkType),
        sinkFields.path,
        sinkFields.url,
        sinkFields.format,
        field('Batch size', batchSize),
        field('Flush interval', flushInterval),
        sinkFields.compression,
      ),
    ),
  );
  ed.load().catch((e) => ed.say(e.message, false));
  return ed.el;
}
