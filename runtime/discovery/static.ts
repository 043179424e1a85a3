/** The fixed pool of `NODE_FILTER=static` (STATIC_TARGETS). No I/O; every route is the pool. */
import { Provider, RouteKey, sortTargets, Target } from '../types';

export class StaticProvider implements Provider {
  readonly name = 'static';
  readonly scope: string;
  private readonly targets: readonly Target[];

  constructor(targets: readonly Target[]) {
    this.targets = Object.freeze(sortTargets(targets));
    this.scope = `static.${this.targets.map((t) => t.id).join(',')}`;
  }

  async discover(_route: RouteKey, _signal?: AbortSignal): Promise<Target[]> {
    return [...this.targets];
  }
}
