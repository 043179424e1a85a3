/**
 * `./.env`, as the Karma Proxy seed read it: with godotenv 1.5, whose rules are these.
 * - A setting is `KEY=value`, `KEY: value` or `export KEY=value`; a name is letters, digits, `_` and `.`.
 *   Blank lines and lines starting with `#` are skipped; after a quoted value, the line may go on with a
 *   comment (or another setting).
 * - An unquoted value runs to the end of its line, trimmed; a `#` after a space starts a comment (the
 *   last such `#` of the line), any other `#` is part of the value (`TAG_VALUE=web#blue`).
 * - A single-quoted value is taken as written. A double-quoted one may span lines; in it `\n` and `\r`
 *   are a newline and a carriage return, and a backslash before any other character but `$` is dropped
 *   (`\"` is a quote).
 * - Outside single quotes, `$NAME` and `${NAME}` (upper-case letters, digits and `_` only) are the value
 *   of NAME from the lines above, else the environment, else empty; `\$` is a plain `$`, and any other
 *   `$` is kept as it is (`pa$$word`, `$lower`).
 * godotenv refuses the whole file at its first bad line; here every bad line is named by its number (its
 * text may be a password) and the rest are read all the same, for their own checks. Stricter than
 * godotenv in one way: a name with a space inside (`REDIS_URL redis://…` read up to its `:`) is a bad
 * line, not a setting nobody can use.
 * Pure: main.ts reads the file and decides what of it to take.
 */

export interface DotEnv {
  /** Every KEY of the file with its value, expanded, in the file's order (a repeated key: the last). */
  readonly values: ReadonlyMap<string, string>;
  /** Numbers of the lines that are neither blank, a comment, nor a setting (left out of `values`). */
  readonly badLines: readonly number[];
}

/** Blanks within a line (godotenv's isSpace: no line ends). */
const BLANK = /[\t\v\f\r \u0085\u00a0]/;
const isBlank = (c: string | undefined): boolean => c !== undefined && BLANK.test(c);
const NAME_CHAR = /[\p{L}\p{N}_.]/u;
const VARIABLE = /(\\)?\$\(?\{?([A-Z0-9_]+)?\}?/g;

export function parseDotEnv(text: string, env: Readonly<Record<string, string | undefined>>): DotEnv {
  // As godotenv: a YAML document line `---` is nothing, and CRLF is LF (neither changes line numbers).
  const src = text.replace(/---\n/g, '\n').replace(/\r\n/g, '\n');
  const values = new Map<string, string>();
  const badLines = new Set<number>();
  const lineAt = (i: number): number => {
    let n = 1;
    for (let j = src.indexOf('\n'); j !== -1 && j < i; j = src.indexOf('\n', j + 1)) n++;
    return n;
  };
  const expand = (v: string): string =>
    v.replace(VARIABLE, (whole, escaped: string | undefined, name: string | undefined) =>
      escaped ? whole.slice(1) : name ? (values.get(name) ?? env[name] ?? '') : whole,
    );

  let pos = 0;
  for (;;) {
    // The next statement: past blanks, line ends and comment lines.
    while (pos < src.length && /\s/.test(src[pos])) pos++;
    if (pos >= src.length) break;
    if (src[pos] === '#') {
      const eol = src.indexOf('\n', pos);
      if (eol === -1) break;
      pos = eol;
      continue;
    }
    const start = pos;
    const bad = (): void => {
      badLines.add(lineAt(start));
      const eol = src.indexOf('\n', start);
      pos = eol === -1 ? src.length : eol;
    };

    // The name.
    if (src.startsWith('export', pos) && isBlank(src[pos + 6])) {
      pos += 6;
      while (isBlank(src[pos])) pos++;
    }
    const nameStart = pos;
    while (pos < src.length && src[pos] !== '=' && src[pos] !== ':' && (isBlank(src[pos]) || NAME_CHAR.test(src[pos]))) pos++;
    const name = src.slice(nameStart, pos).replace(/[\t\v\f\r \u0085\u00a0]+$/, '');
    if (pos >= src.length || (src[pos] !== '=' && src[pos] !== ':') || name === '' || /[\s]/.test(name)) {
      bad();
      continue;
    }
    pos++;
    while (isBlank(src[pos])) pos++;

    // The value.
    const quote = src[pos];
    if (quote === '"' || quote === "'") {
      let end = pos + 1;
      while (end < src.length && (src[end] !== quote || src[end - 1] === '\\')) end++;
      if (end >= src.length) {
        bad(); // unterminated: godotenv refuses the file
        continue;
      }
      // godotenv trims every quote at either end, not just one.
      const inner = src.slice(pos, end).replace(quote === '"' ? /^"+|"+$/g : /^'+|'+$/g, '');
      values.set(name, quote === "'" ? inner : expand(unescape(inner)));
      pos = end + 1;
      continue;
    }
    let eol = pos;
    while (eol < src.length && src[eol] !== '\n' && src[eol] !== '\r') eol++;
    let line = src.slice(pos, eol);
    for (let i = line.length - 1; i > 0; i--) {
      if (line[i] === '#' && isBlank(line[i - 1])) {
        line = line.slice(0, i);
        break;
      }
    }
    values.set(name, expand(line.replace(/^[\t\v\f\r \u0085\u00a0]+|[\t\v\f\r \u0085\u00a0]+$/g, '')));
    pos = eol;
  }
  return { values, badLines: [...badLines].sort((a, b) => a - b) };
}

/** A double-quoted value's escapes: `\n`, `\r`; a backslash before anything else but `$` dropped. */
function unescape(v: string): string {
  return v
    .replace(/\\[\s\S]/g, (m) => (m === '\\n' ? '\n' : m === '\\r' ? '\r' : m))
    .replace(/\\([^$])/g, '$1');
}
