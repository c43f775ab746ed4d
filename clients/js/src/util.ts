/** Small helpers of the client that belong to no one concern. */

export function sameSet(set: Set<string>, list: string[]): boolean {
  return set.size === list.length && list.every((x) => set.has(x));
}

/** A handler that throws must not stop delivery to the others: report it the browser's way. */
export function safely<T>(fn: (value: T) => void, value: T): void {
  try {
    fn(value);
  } catch (error) {
    const report = (globalThis as any).reportError;
    if (typeof report === "function") report(error);
    else setTimeout(() => { throw error; });
  }
}
