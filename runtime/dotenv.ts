/**
 * `./.env`, as the Karma Proxy seed read it (godotenv): `KEY=value`, `export KEY=value` and godotenv's
 * `KEY: value` lines, quotes and comments, and `${VAR}` / `$VAR` in a value that is not single-quoted
 * expanded from the lines above it or the environment (an unknown one is empty, `\$` a plain `$`).
 * Pure: main.ts reads the file and decides what of it to take.
 */
import * as util from 'node:util';

export interface DotEnv {
  /** Every KEY of the file with its value, expanded, in the file's order (a repeated key: the last). */
  readonly values: ReadonlyMap<string, string>;
  /** Numbers of the lines that are neither blank, a comment, nor a setting (left out of `values`). */
  readonly badLines: readonly number[];
}

const LINE = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)(?:\s*=|:(?=[ \t]))\s*(.*)$/;

export function parseDotEnv(text: string, env: Readonly<Record<string, string | undefined>>): DotEnv {
  const badLines: number[] = [];
  /** Keys whose (last) value is single-quoted: taken as written. */
  const literal = new Set<string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) {
      badLines.push(i + 1);
      continue;
    }
    const [, name, value] = m as unknown as [string, string, string];
    const quote = value[0];
    if (quote === "'") literal.add(name);
    else literal.delete(name);
    // An opening quote not closed on its line: the value goes on to the line that closes it.
    if ((quote === '"' || quote === "'" || quote === '`') && value.indexOf(quote, 1) === -1) {
      let j = i + 1;
      while (j < lines.length && !lines[j].includes(quote)) j++;
      i = j;
    }
  }
  // Bad lines are left out, so that the rest can be read (and checked) all the same: Node's parser would
  // take one into the next line's name. Node's parser for the rest (quotes, escapes, comments), given
  // godotenv's `KEY: value` as `KEY=value`.
  const bad = new Set(badLines.map((n) => n - 1));
  const good = bad.size === 0 ? text : lines.map((l, i) => (bad.has(i) ? '' : l)).join('\n');
  const parsed = util.parseEnv(good.replace(/^(\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_.-]*):(?=[ \t])/gm, '$1='));
  const values = new Map<string, string>();
  for (const [name, value = ''] of Object.entries(parsed)) {
    values.set(name, literal.has(name) ? value : expand(value, (v) => values.get(v) ?? env[v] ?? ''));
  }
  return { values, badLines };
}

/** godotenv's expansion: `${NAME}` and `$NAME`; `\$` is a `$` kept as it is. */
function expand(value: string, lookup: (name: string) => string): string {
  return value.replace(/(\\?)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (whole, escaped: string, braced?: string, bare?: string) =>
    escaped ? whole.slice(1) : lookup((braced ?? bare)!),
  );
}
