/** Tests run TypeScript through ts-jest without type checking (isolatedModules);
 * `npm run typecheck` checks types once for the whole tree, which is far faster than per file. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.tsx?$': ['ts-jest', { diagnostics: false }] },
  testTimeout: 30000,
  maxWorkers: 2,
  reporters: ['default', '<rootDir>/test/support/summary-reporter.js'],
  // Child processes and servers must be closed by each test; this only makes a leak visible.
  detectOpenHandles: false,
  forceExit: false,
};
