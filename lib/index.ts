/** The package's face: the construct, its stack, and the cost estimate they print. */
export { InvalidPropsError, KarmaProxy } from './karma-proxy';
export type { DiscoveryMode, KarmaProxyHealthCheck, KarmaProxyProps } from './karma-proxy';
export { KarmaProxyStack } from './karma-proxy-stack';
export type { KarmaProxyStackProps } from './karma-proxy-stack';
export {
  ALB_FLOOR_MONTHLY_USD,
  PRICE_DATE,
  PRICE_REGION,
  PRICES,
  estimateMonthlyCost,
  formatCostSummary,
  formatCostTable,
} from './cost';
export type { CostEstimate, CostInputs, CostLine } from './cost';
export { propsFromContext, envVarName, CONTEXT_KEYS, EXAMPLE_CONTEXT } from './context';
export type { ContextReader, ContextResult } from './context';
