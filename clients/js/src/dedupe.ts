/**
 * Delivery is at least once (a resume replays from the cursor, a snapshot repeats an event's id):
 * these remember which ids were delivered, so the app gets each event once.
 */

import type { RealtimeEvent } from "./types.js";

/** The last `capacity` ids, for dropping duplicates in O(1). */
export class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly capacity: number) {}
  has(id: string): boolean {
    return this.ids.has(id);
  }
  add(id: string): void {
    this.ids.add(id);
    if (this.ids.size > this.capacity) this.ids.delete(this.ids.values().next().value as string);
  }
  clear(): void {
    this.ids.clear();
  }
}

/** The ids delivered lately, events and snapshots apart (see `admit`). */
export class DeliveredIds {
  private readonly seen = new RecentIds(2000);
  private readonly snapshotsSeen = new RecentIds(500);

  /** Whether `event` is new, remembering it if so. */
  admit(event: RealtimeEvent): boolean {
    if (this.seen.has(event.id)) return false; // at-least-once delivery: an id we already have
    if (event.snapshot) {
      // A snapshot repeats the id of an event a replay may still deliver in order: that one is
      // delivered too (so the app ends on the latest state); only the same snapshot twice is not.
      if (this.snapshotsSeen.has(event.id)) return false;
      this.snapshotsSeen.add(event.id);
    } else {
      this.seen.add(event.id);
    }
    return true;
  }

  /** After a reset: history is refetched, ids seen before it must be delivered again. */
  clear(): void {
    this.seen.clear();
    this.snapshotsSeen.clear();
  }
}
