// A React component against the packed client's React entry (scripts/check-package.mjs).
import { useMemo } from "react";
import { connect, type RealtimeEvent } from "@forge-factory/realtime";
import { useAnalysisProgress, useChannel, useNotifications, type UseNotifications } from "@forge-factory/realtime/react";

export function Inbox({ getToken }: { getToken: () => Promise<string> }) {
  const rt = useMemo(() => connect({ getToken }), [getToken]);
  const inbox: UseNotifications = useNotifications(rt, { status: "all", tags: ["billing"] });
  const { progress } = useAnalysisProgress(rt, "a1");
  const last: RealtimeEvent<{ sha: string }> | null = useChannel<{ sha: string }>(rt, "repository:r1", (event) => {
    console.log(event.data.sha);
  });
  // @ts-expect-error the hooks take a client (or null), not options: fails if the types were lost
  useNotifications({ getToken });
  return (
    <section>
      <h2>Inbox ({inbox.unread})</h2>
      <p>{progress ?? "-"} {last?.data.sha}</p>
      <ul>
        {inbox.items.map((n) => (
          <li key={n.id}>
            {n.title}
            <button onClick={() => void inbox.markRead(n.id)}>read</button>
            <button onClick={() => void inbox.snooze(n.id, new Date(Date.now() + 3_600_000))}>later</button>
            <button onClick={() => void inbox.bulk([n.id], "archive")}>archive</button>
            {n.actions.map((a) => (
              <button key={a.id} onClick={() => void inbox.act(n.id, a.id)}>{a.label}</button>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}
