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

/**
 * Everything lib/index.ts exports says what it is: each declaration has a TSDoc description, and so
 * does each public member of an exported class or interface (constructors excepted, as in aws-cdk-lib).
 */
const LIB = path.join(__dirname, '..', '..', 'lib');
const parse = (file: string): ts.SourceFile =>
  ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
/** A JSDoc with words before its tags: `/** @default x *\/` alone says what the default is, not what the thing is. */
const described = (node: ts.Node): boolean => ts.getJSDocCommentsAndTags(node)
  .some((d) => ts.isJSDoc(d) && (ts.getTextOfJSDocComment(d.comment) ?? '').trim() !== '');

const exported: { name: string; node: ts.Node }[] = [];
parse(path.join(LIB, 'index.ts')).forEachChild((statement) => {
  if (!ts.isExportDeclaration(statement) || !statement.moduleSpecifier || !statement.exportClause) return;
  if (!ts.isNamedExports(statement.exportClause)) return;
  const names = statement.exportClause.elements.map((e) => (e.propertyName ?? e.name).text);
  const source = parse(path.join(LIB, `${(statement.moduleSpecifier as ts.StringLiteral).text}.ts`));
  for (const name of names) {
    source.forEachChild((node) => {
      if (ts.isVariableStatement(node)) {
        if (node.declarationList.declarations.some((d) => d.name.getText(source) === name)) exported.push({ name, node });
      } else if ((ts.isClassDeclaration(node) || ts.isInterfaceDeclaration(node) || ts.isFunctionDeclaration(node) ||
        ts.isTypeAliasDeclaration(node)) && node.name?.text === name) {
        exported.push({ name, node });
        if (ts.isClassDeclaration(node) || ts.isInterfaceDeclaration(node)) {
          for (const member of node.members as ts.NodeArray<ts.ClassElement | ts.TypeElement>) {
            if (!member.name || ts.isConstructorDeclaration(member)) continue;
            const hidden = ts.canHaveModifiers(member) && ts.getModifiers(member)?.some((m) =>
              m.kind === ts.SyntaxKind.PrivateKeyword || m.kind === ts.SyntaxKind.ProtectedKeyword);
            if (!hidden) exported.push({ name: `${name}.${member.name.getText(source)}`, node: member });
          }
        }
      }
    });
  }
});

test('the exports of lib/index.ts are found', () => {
  expect(exported.map((e) => e.name)).toEqual(expect.arrayContaining([
    'KarmaProxy', 'KarmaProxy.role', 'KarmaProxyStack', 'KarmaProxyStack.proxy', 'estimateMonthlyCost', 'CostLine.item',
    'propsFromContext', 'ContextResult.props',
  ]));
});

test('every export of lib/index.ts, and every public member of one, has a TSDoc description', () => {
  expect(exported.filter((e) => !described(e.node)).map((e) => e.name)).toEqual([]);
});
