// A new app's code against the packed client's declarations (scripts/check-package.mjs type-checks
// it, strict, with moduleResolution bundler and node16). Only the package's public entry is used.
import {
  TRANSPORTS,
  analysisStore,
  applyNotificationEvent,
  connect,
  initialNotificationsState,
  notificationsStore,
  presenceStore,
  type BulkAction,
  type Changed,
  type ConnectionState,
  type Notification,
  type NotificationCounts,
  type NotificationsState,
  type NotificationsStore,
  type RealtimeClient,
  type RealtimeEvent,
  type ServiceError,
  type TransportName,
} from "@forge-factory/realtime";

interface ReviewData {
  repository: string;
  score: number;
}

const rt: RealtimeClient = connect({
  url: "https://rt.example.com",
  getToken: async () => "jwt",
  transports: ["ws", "sse"],
  clientId: "tab-1",
  channels: ["repository:r1"],
  backoff: { spreadMs: 1_000 },
});

const off: () => void = rt.subscribe("analysis:a1", (event: RealtimeEvent<ReviewData>) => {
  const score: number = event.data.score;
  const id: string = event.id;
  console.log(score, id, event.snapshot === true);
});
rt.on("reset", ({ reason }) => {
  const why: "gap" | "bad_cursor" | "no_cursor" = reason;
  console.log(why);
});
rt.on("error", (error: ServiceError) => console.log(error.code, error.retry_after));
rt.on("state", (state: ConnectionState) => console.log(state));
rt.setTransports([...TRANSPORTS].reverse() as TransportName[]);
// @ts-expect-error a channel is a string: fails if the declarations were lost (everything `any`)
rt.subscribe(42, () => {});
// @ts-expect-error not an event the client emits
rt.on("no-such-event", () => {});

// The inbox store, with the section-10 calls (archive, bulk, snooze, actions).
const inbox: NotificationsStore = notificationsStore(rt, { status: "unread", tags: ["billing"], limit: 50 });
const stop = inbox.subscribe(() => {
  const state: NotificationsState = inbox.get();
  const badge: number = state.unread;
  const counts: NotificationCounts = state.counts;
  const first: Notification | undefined = state.items[0];
  console.log(badge, counts.unseen, counts.total, first?.actions[0]?.label, first?.snoozed_until);
});

async function sectionTen(id: string): Promise<void> {
  await inbox.setFilter({ status: "snoozed", category: "billing" });
  const read: Notification = await inbox.markRead(id);
  await inbox.markUnread(read.id);
  await inbox.markAllRead();
  await inbox.markAllSeen();
  await inbox.archive(id);
  await inbox.unarchive(id);
  const archived: Changed = await inbox.archiveAll({ status: "read" });
  const action: BulkAction = "archive";
  const bulk: Changed = await inbox.bulk([id, "n2"], action);
  const snoozed: Notification = await inbox.snooze(id, new Date(Date.now() + 3_600_000));
  await inbox.snooze(id, "2030-01-01T00:00:00Z");
  await inbox.unsnooze(snoozed.id);
  const acted: Notification = await inbox.act(id, "approve");
  await inbox.remove(id);
  await inbox.delete(id);
  await inbox.refresh();
  console.log(archived.changed, bulk.counts?.unread, acted.action_taken, acted.acted_at);
  // @ts-expect-error not a bulk action
  await inbox.bulk([id], "snooze");
}

// The pure step, and the other stores.
const next: NotificationsState = applyNotificationEvent(initialNotificationsState({ status: "all" }), {
  id: "1-0",
  channel: "user:u1",
  type: "notification.read",
  data: { all: true, counts: { unread: 0, unseen: 0, total: 3 } },
  ts: "2030-01-01T00:00:00Z",
});
const progress = analysisStore(rt, "a1").get();
const percent: number | null = progress.progress;
const viewers = presenceStore(rt, "repository:r1").get();

void sectionTen("n1");
console.log(next.items.length, percent, viewers.map((user) => user.user_id));
stop();
off();
rt.close();
