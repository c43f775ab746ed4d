/**
 * Small observable stores over a client: the notification inbox, an analysis's progress, the
 * latest event of a channel, and who is viewing a channel. The React hooks (./react.ts) are thin
 * wrappers around them; a page without React uses them directly. A store starts when its first
 * listener subscribes and stops with its last one (`subscribe`/`get` suit useSyncExternalStore).
 *
 * This module only gathers them (./stores/*), for the package's entry and the React hooks.
 */

export { analysisStore, channelStore, type AnalysisProgress } from "./stores/channel.js";
export {
  applyNotificationEvent,
  inNotificationView,
  initialNotificationsState,
  notificationEventNeedsRefetch,
  notificationFilter,
  notificationsStore,
  type BulkAction,
  type Changed,
  type Notification,
  type NotificationAction,
  type NotificationCounts,
  type NotificationFilter,
  type NotificationStatus,
  type NotificationsOptions,
  type NotificationsState,
  type NotificationsStateLike,
  type NotificationsStore,
} from "./stores/notifications.js";
export { presenceStore } from "./stores/presence.js";
export type { Store } from "./stores/store.js";
