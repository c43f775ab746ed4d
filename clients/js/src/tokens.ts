/**
 * What the client reads from its token: the claims (`sub`, `tid`, `exp`) and, from `exp`, when to
 * ask `getToken()` for the next one. The token is never verified here; the server does that.
 */

/** The claims of a JWT, without verifying it (the server does): `exp` tells when to refresh. */
export function decodeToken(token: string): { sub?: string; tid?: string; exp?: number; [claim: string]: unknown } {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

/** When to refresh a token with `remaining` ms left: at 80% of the remaining lifetime, at most
 * one minute before `exp`, and not sooner than a second from now. */
export function refreshDelay(remaining: number): number {
  return Math.max(1_000, remaining - Math.min(60_000, remaining * 0.2));
}
