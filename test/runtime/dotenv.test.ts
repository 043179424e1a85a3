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
