/** ./.env read as the Karma Proxy seed's godotenv read it. */
import { parseDotEnv } from '../../runtime/dotenv';

const read = (text: string, env: Record<string, string> = {}) => Object.fromEntries(parseDotEnv(text, env).values);

test('${VAR} and $VAR expand from the lines above, then the environment; an unknown one is empty', () => {
  expect(read('REDIS_HOST=10.0.0.5\nREDIS_URL=redis://${REDIS_HOST}:6379\nDOMAIN="$ZONE"\nPORT=${NOPE}6969\n', { ZONE: 'apps.example.com' })).toEqual({
    REDIS_HOST: '10.0.0.5',
    REDIS_URL: 'redis://10.0.0.5:6379',
    DOMAIN: 'apps.example.com',
    PORT: '6969',
  });
});

test("a single-quoted value is taken as written, and \\$ is a plain $", () => {
  expect(read("A=1\nLITERAL='${A} $A'\nESCAPED=\"p\\$A\"\n")).toEqual({ A: '1', LITERAL: '${A} $A', ESCAPED: 'p$A' });
});

test("godotenv's KEY: value and export lines are read; a line that is no setting is named by its number", () => {
  expect(read('export NODE_FILTER: static\n# comment\nWORKERS = 2\n')).toEqual({ NODE_FILTER: 'static', WORKERS: '2' });
  expect(parseDotEnv('A=1\nnot a setting\nB="multi\nline"\nC 2\n', {}).badLines).toEqual([2, 5]);
});

test('the lines around a bad one are read all the same (for their own checks), and the bad one takes none of them along', () => {
  const { values, badLines } = parseDotEnv('A=1\nREDIS_URL redis://:secret@h:6379\nPORT=1\nB="multi\nline"\nC 2\nD=4\n', {});
  expect(badLines).toEqual([2, 6]);
  expect(Object.fromEntries(values)).toEqual({ A: '1', PORT: '1', B: 'multi\nline', D: '4' });
});

describe("godotenv's reading, where another .env reader differs", () => {
  test('a # starts a comment only after a blank (the last such one); any other # is the value’s', () => {
    expect(read('TAG_VALUE=web#blue\nA=abc # a comment\nB=a #b #c\nC="quoted" # after\nD=#x\n')).toEqual({
      TAG_VALUE: 'web#blue',
      A: 'abc',
      B: 'a #b',
      C: 'quoted',
      D: '#x',
    });
  });

  test('only $NAME and ${NAME} of upper-case letters, digits and _ expand; any other $ is kept', () => {
    expect(read('PASSWORD=pa$$word\nL=abc$lower\nB=${lower}\nU=$HOME/x\nM="$HOME"\n', { HOME: '/root', lower: 'no' })).toEqual({
      PASSWORD: 'pa$$word',
      L: 'abc$lower',
      B: '${lower}',
      U: '/root/x',
      M: '/root',
    });
  });

  test('double quotes: \\" is a quote, \\n a newline, other backslashes dropped; single quotes as written', () => {
    expect(read('A="a\\"b"\nB="x\\ny"\nC="c\\:d"\nD=\'a\\nb\'\nE=\'it\\\'s\'\n')).toEqual({ A: 'a"b', B: 'x\ny', C: 'c:d', D: 'a\\nb', E: "it\\'s" });
  });

  test('KEY:value without a blank, CRLF lines, a setting after a quoted value on the same line, dotted names', () => {
    expect(read('A:1\r\nB="2" C=3\r\nx.y=4\r\n')).toEqual({ A: '1', B: '2', C: '3', 'x.y': '4' });
  });

  test('a name with a dash or a space, text after a closing quote and an unterminated quote (quotes span lines) are bad lines; the rest is read', () => {
    const { values, badLines } = parseDotEnv('A=1\nMY-KEY=4\nREDIS_URL redis://:pw@h:6379\nD="x"junk\nE=5\nB="open\nC=3\n', {});
    expect(badLines).toEqual([2, 3, 4, 6]);
    expect(Object.fromEntries(values)).toEqual({ A: '1', D: 'x', E: '5', C: '3' });
  });
});
