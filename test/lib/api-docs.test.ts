/** The public props read like aws-cdk-lib's: every field readonly, every optional one with its @default. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';

const files = ['karma-proxy.ts', 'karma-proxy-stack.ts'].map((f) => path.join(__dirname, '..', '..', 'lib', f));

const props: { where: string; readonly: boolean; optional: boolean; doc: string }[] = [];
for (const file of files) {
  const source = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  source.forEachChild((node) => {
    if (!ts.isInterfaceDeclaration(node) || !node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword)) return;
    for (const member of node.members) {
      if (!ts.isPropertySignature(member)) continue;
      props.push({
        where: `${node.name.text}.${member.name.getText(source)}`,
        readonly: !!member.modifiers?.some((m) => m.kind === ts.SyntaxKind.ReadonlyKeyword),
        optional: !!member.questionToken,
        doc: ts.getJSDocCommentsAndTags(member).map((d) => d.getText(source)).join('\n'),
      });
    }
  });
}

test('the props interfaces are found', () => {
  expect(props.map((p) => p.where)).toEqual(expect.arrayContaining([
    'KarmaProxyProps.vpc', 'KarmaProxyProps.minCapacity', 'KarmaProxyHealthCheck.path', 'KarmaProxyStackProps.hostedZoneId',
  ]));
});

test.each(props.map((p) => [p.where, p] as const))('%s is readonly and documented with its default', (_where, p) => {
  expect(p.readonly).toBe(true);
  if (p.optional) expect(p.doc).toMatch(/@default\s+\S/);
});
