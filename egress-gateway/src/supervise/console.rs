//! The operator console (`egress-gateway supervise`): pending proposals of every bottle,
//! newest first, with their payload; approve (a reason is required, the scope is
//! selectable), reject (a reason is optional), the decision history. No "modify".
//!
//! `App` is a pure state machine: keys go in (`on_key`), an `Action` comes out, and
//! `render` draws the state; `apply` carries an action out against the stores, and `run`
//! is the terminal loop, polling the stores every 500 ms so the screen follows proposals
//! that arrive and decisions taken elsewhere.
use anyhow::Context as _;
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, List, ListItem, ListState, Paragraph, Wrap},
};

use super::{
    operator::Operator,
    protocol::{self, AuditEntry, Proposal, Scope, Status},
    render,
};
use crate::config::Config;

pub const REFRESH: Duration = Duration::from_millis(500);

/// How many characters of an agent-supplied field a list row shows.
pub const ROW_BUDGET: usize = 48;
/// How many characters of an agent-supplied field the detail shows: a path the gateway
/// proposes (at most `MAX_PATH_CHARS` as sent) whole, even with every character escaped;
/// a store written otherwise may hold longer, cut with the marker.
pub const DETAIL_BUDGET: usize = 10 * super::MAX_PATH_CHARS;
pub use render::{AGENT_CLOSE, AGENT_OPEN, agent_text, budget};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Pending,
    History,
}

/// A decision (or a filter) being typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Approve {
        id: String,
        reason: String,
        scope: Scope,
    },
    Reject {
        id: String,
        reason: String,
    },
    /// Reject every proposal the filter shows.
    RejectAll {
        ids: Vec<String>,
        reason: String,
    },
    Filter,
}

/// What the key asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Read the stores now (the history view was opened).
    Refresh,
    Decide {
        id: String,
        status: Status,
        reason: String,
        scope: Option<Scope>,
    },
    RejectAll {
        ids: Vec<String>,
        reason: String,
    },
}

#[derive(Default)]
pub struct App {
    /// Every pending proposal, newest first.
    pending: Vec<Proposal>,
    history: Vec<AuditEntry>,
    /// Index into the proposals the filter shows.
    selected: usize,
    view: Option<View>,
    prompt: Option<Prompt>,
    /// Only proposals whose text contains this (case-insensitive) are shown.
    filter: String,
    /// First line of the detail's scrolling part.
    scroll: u16,
    /// The last result or complaint, shown at the bottom.
    message: String,
    /// Seconds since the epoch, for ages.
    now: u64,
    /// The proposals already read: a refresh reads only new ones.
    cache: super::operator::PendingCache,
}

/// The style of agent-supplied text: visibly not the gateway's.
pub fn agent_style() -> Style {
    Style::new().fg(Color::Yellow).add_modifier(Modifier::ITALIC)
}

fn agent(text: &str, limit: usize) -> Span<'static> {
    Span::styled(agent_text(text, limit), agent_style())
}

fn matches_filter(p: &Proposal, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let f = filter.to_lowercase();
    [&p.bottle, &p.payload.host, &p.payload.method, &p.payload.path, &p.payload.reason, &p.payload.context, &p.id]
        .iter()
        .any(|t| t.to_lowercase().contains(&f))
}

impl App {
    pub fn view(&self) -> View {
        self.view.unwrap_or(View::Pending)
    }

    pub fn prompt(&self) -> Option<&Prompt> {
        self.prompt.as_ref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// How many proposals were read from the stores so far (the rest came from memory).
    pub fn proposals_read(&self) -> u64 {
        self.cache.reads
    }

    /// The proposals the filter shows, newest first.
    pub fn visible(&self) -> Vec<&Proposal> {
        self.pending.iter().filter(|p| matches_filter(p, &self.filter)).collect()
    }

    pub fn selected(&self) -> Option<&Proposal> {
        self.visible().get(self.selected).copied()
    }

    fn select(&mut self, index: usize) {
        if index != self.selected {
            self.scroll = 0;
        }
        self.selected = index;
    }

    /// New pending proposals; the selection follows its proposal if it is still shown.
    pub fn refresh(&mut self, mut pending: Vec<Proposal>, now: u64) {
        let keep = self.selected().map(|p| p.id.clone());
        pending.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        self.pending = pending;
        self.now = now;
        self.refollow(keep);
        // A proposal decided elsewhere (or whose hold ended) cannot be decided here.
        let gone = match &self.prompt {
            Some(Prompt::Approve { id, .. } | Prompt::Reject { id, .. }) => !self.pending.iter().any(|p| &p.id == id),
            _ => false,
        };
        if gone {
            self.prompt = None;
            self.message = "that proposal is no longer pending (decided elsewhere, or its hold ended)".into();
        }
    }

    /// The decision history, newest first.
    pub fn refresh_history(&mut self, mut history: Vec<AuditEntry>) {
        history.reverse();
        self.history = history;
    }

    fn refollow(&mut self, keep: Option<String>) {
        let visible = self.visible();
        let index = keep
            .and_then(|id| visible.iter().position(|p| p.id == id))
            .unwrap_or(self.selected.min(visible.len().saturating_sub(1)));
        self.select(index);
    }

    /// The outcome of an action, for the status line.
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(prompt) = self.prompt.take() {
            return self.on_prompt_key(prompt, key);
        }
        match (self.view(), key.code) {
            (_, KeyCode::Char('q')) => return Action::Quit,
            (View::Pending, KeyCode::Char('h')) => {
                self.view = Some(View::History);
                return Action::Refresh;
            }
            (View::History, KeyCode::Char('h') | KeyCode::Esc) => self.view = Some(View::Pending),
            (View::Pending, KeyCode::Up | KeyCode::Char('k')) => self.select(self.selected.saturating_sub(1)),
            (View::Pending, KeyCode::Down | KeyCode::Char('j')) => {
                self.select((self.selected + 1).min(self.visible().len().saturating_sub(1)));
            }
            (View::Pending, KeyCode::PageDown | KeyCode::Char(']')) => self.scroll = self.scroll.saturating_add(5),
            (View::Pending, KeyCode::PageUp | KeyCode::Char('[')) => self.scroll = self.scroll.saturating_sub(5),
            (View::Pending, KeyCode::Char('/')) => {
                self.message.clear();
                self.prompt = Some(Prompt::Filter);
            }
            (View::Pending, KeyCode::Esc) if !self.filter.is_empty() => {
                let keep = self.selected().map(|p| p.id.clone());
                self.filter.clear();
                self.refollow(keep);
            }
            (View::Pending, KeyCode::Char('R')) => {
                let ids: Vec<String> = self.visible().iter().map(|p| p.id.clone()).collect();
                if ids.is_empty() {
                    self.message = "nothing pending to reject".into();
                } else {
                    self.message.clear();
                    self.prompt = Some(Prompt::RejectAll { ids, reason: String::new() });
                }
            }
            (View::Pending, KeyCode::Char('a' | 'r')) => match self.selected() {
                None => self.message = "nothing pending to decide".into(),
                Some(p) => {
                    let id = p.id.clone();
                    self.message.clear();
                    self.prompt = Some(if key.code == KeyCode::Char('a') {
                        Prompt::Approve { id, reason: String::new(), scope: Scope::default() }
                    } else {
                        Prompt::Reject { id, reason: String::new() }
                    });
                }
            },
            _ => {}
        }
        Action::None
    }

    fn on_prompt_key(&mut self, mut prompt: Prompt, key: KeyEvent) -> Action {
        if prompt == Prompt::Filter {
            let keep = self.selected().map(|p| p.id.clone());
            match key.code {
                KeyCode::Esc => self.filter.clear(),
                KeyCode::Enter => {}
                KeyCode::Backspace => {
                    self.filter.pop();
                    self.prompt = Some(prompt);
                }
                KeyCode::Char(c) => {
                    self.filter.push(c);
                    self.prompt = Some(prompt);
                }
                _ => self.prompt = Some(prompt),
            }
            self.refollow(keep);
            return Action::None;
        }
        let reason = match &mut prompt {
            Prompt::Approve { reason, .. } | Prompt::Reject { reason, .. } | Prompt::RejectAll { reason, .. } => reason,
            Prompt::Filter => unreachable!("handled above"),
        };
        match key.code {
            KeyCode::Esc => {
                self.message = "cancelled".into();
                return Action::None;
            }
            KeyCode::Enter => return self.confirm(prompt),
            KeyCode::Backspace => {
                reason.pop();
            }
            KeyCode::Tab => {
                if let Prompt::Approve { scope, .. } = &mut prompt {
                    let i = Scope::ALL.iter().position(|s| s == scope).unwrap_or(0);
                    *scope = Scope::ALL[(i + 1) % Scope::ALL.len()];
                }
            }
            KeyCode::Char(c) => reason.push(c),
            _ => {}
        }
        self.prompt = Some(prompt);
        Action::None
    }

    fn confirm(&mut self, prompt: Prompt) -> Action {
        match prompt {
            Prompt::Approve { ref reason, .. } if reason.trim().is_empty() => {
                self.message = "a reason is required to approve: type it, then Enter".into();
                self.prompt = Some(prompt);
                Action::None
            }
            Prompt::Approve { id, reason, scope } => {
                Action::Decide { id, status: Status::Approved, reason: reason.trim().to_string(), scope: Some(scope) }
            }
            Prompt::Reject { id, reason } => {
                Action::Decide { id, status: Status::Rejected, reason: reason.trim().to_string(), scope: None }
            }
            Prompt::RejectAll { ids, reason } => Action::RejectAll { ids, reason: reason.trim().to_string() },
            Prompt::Filter => Action::None,
        }
    }

    pub fn render(&self, frame: &mut Frame<'_>) {
        let [title, main, detail, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(14),
            Constraint::Length(6),
        ])
        .areas(frame.area());
        let heading = match self.view() {
            View::Pending if self.filter.is_empty() => {
                format!("egress-gateway supervise: {} pending", self.pending.len())
            }
            View::Pending => format!(
                "egress-gateway supervise: {} pending, {} shown (filter: {})",
                self.pending.len(),
                self.visible().len(),
                render::inert(&self.filter)
            ),
            View::History => format!("egress-gateway supervise: history ({} decisions)", self.history.len()),
        };
        frame.render_widget(Line::from(Span::styled(heading, Style::new().add_modifier(Modifier::BOLD))), title);
        match self.view() {
            View::Pending => {
                self.render_pending(frame, main);
                self.render_detail(frame, detail);
            }
            View::History => self.render_history(frame, main.union(detail)),
        }
        self.render_footer(frame, footer);
    }

    /// One item, two lines: the gateway's (age, bottle, destination host, detector
    /// reason), then, indented, the agent's method and path, marked and cut to
    /// `ROW_BUDGET`, on a line of their own that cannot run into the gateway's.
    fn row(&self, p: &Proposal) -> Text<'static> {
        let p = p.inert();
        Text::from(vec![
            Line::from(vec![
                Span::raw(format!("{:>4}  {:<12} ", protocol::format_age(self.now, p.created_at), p.bottle)),
                Span::styled(budget(&p.payload.host, ROW_BUDGET), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!("  {}", budget(&p.payload.reason, ROW_BUDGET * 2))),
            ]),
            Line::from(vec![
                Span::raw("      "),
                agent(&p.payload.method, 16),
                Span::raw(" "),
                agent(&p.payload.path, ROW_BUDGET),
            ]),
        ])
    }

    fn render_pending(&self, frame: &mut Frame<'_>, area: Rect) {
        let items: Vec<ListItem<'_>> = self.visible().into_iter().map(|p| ListItem::new(self.row(p))).collect();
        let empty = items.is_empty();
        let title = match (empty, self.filter.is_empty()) {
            (true, true) => " no pending proposals ",
            (true, false) => " no pending proposal matches the filter ",
            (false, _) => " pending, newest first ",
        };
        let list = List::new(items)
            .block(Block::bordered().title(title))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        let mut state = ListState::default().with_selected((!empty).then_some(self.selected));
        frame.render_stateful_widget(list, area, &mut state);
    }

    /// The gateway's lines (destination host, detector reason, bottle, age, id) in a
    /// fixed part the agent's text cannot reach; below them, the agent's fields, marked,
    /// in a part that scrolls.
    fn render_detail(&self, frame: &mut Frame<'_>, area: Rect) {
        let block = Block::bordered()
            .title(format!(" proposal ({AGENT_OPEN}…{AGENT_CLOSE} = sent by the agent; PgUp/PgDn or [ ] scroll) "));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(p) = self.selected() else {
            frame.render_widget(Paragraph::new("Held requests appear here as the gateway proposes them."), inner);
            return;
        };
        // Inert text only: the layout is computed on what is drawn, and nothing the
        // agent wrote reaches the terminal as a control sequence.
        let p = p.inert();
        let label = |t: &str| Span::styled(format!("{t:<9}"), Style::new().add_modifier(Modifier::BOLD));
        let fixed = vec![
            Line::from(vec![
                label("host"),
                Span::styled(budget(&p.payload.host, 256), Style::new().add_modifier(Modifier::BOLD)),
            ]),
            Line::from(vec![label("reason"), Span::raw(budget(&p.payload.reason, 256))]),
            Line::from(vec![
                label("bottle"),
                Span::raw(format!("{}   age {}   id {}", p.bottle, protocol::format_age(self.now, p.created_at), p.id)),
            ]),
        ];
        // The fixed part is as tall as the host and reason need (wrapped), never taller
        // than the budgets allow: nothing of the agent's is in it.
        let width = usize::from(inner.width.max(1));
        let tall = |n: usize| (9 + n).div_ceil(width);
        let height =
            tall(p.payload.host.chars().count().min(256)) + tall(p.payload.reason.chars().count().min(256)) + 1;
        let [top, rule, rest] =
            Layout::vertical([Constraint::Length(height as u16), Constraint::Length(1), Constraint::Min(1)])
                .areas(inner);
        frame.render_widget(Paragraph::new(fixed).wrap(Wrap { trim: false }), top);
        frame.render_widget(Line::from("─".repeat(rule.width as usize)), rule);
        let scrolling = vec![
            Line::from(vec![label("method"), agent(&p.payload.method, 64)]),
            Line::from(vec![
                label("path"),
                agent(&p.payload.path, DETAIL_BUDGET),
                Span::raw(format!("  ({} characters)", p.payload.path.chars().count())),
            ]),
            Line::from(vec![label("context"), agent(&p.payload.context, DETAIL_BUDGET)]),
            Line::from(p.justification.clone()),
        ];
        frame.render_widget(Paragraph::new(scrolling).wrap(Wrap { trim: false }).scroll((self.scroll, 0)), rest);
    }

    fn render_history(&self, frame: &mut Frame<'_>, area: Rect) {
        let items: Vec<ListItem<'_>> = self.history.iter().map(|e| ListItem::new(e.summary())).collect();
        frame.render_widget(List::new(items).block(Block::bordered().title(" decisions, newest first ")), area);
    }

    fn render_footer(&self, frame: &mut Frame<'_>, area: Rect) {
        let first = match &self.prompt {
            Some(Prompt::Approve { reason, scope, .. }) => format!(
                "approve: reason: {reason}_   scope: {scope}: {} (Tab: gateway/once/persist/any-host)   Enter: confirm   \
                 Esc: cancel",
                scope.meaning()
            ),
            Some(Prompt::Reject { reason, .. }) => {
                format!("reject: reason (optional): {reason}_   Enter: confirm   Esc: cancel")
            }
            Some(Prompt::RejectAll { ids, reason }) => {
                format!("reject ALL {} shown: reason (optional): {reason}_   Enter: confirm   Esc: cancel", ids.len())
            }
            Some(Prompt::Filter) => format!("filter: {}_   Enter: keep   Esc: clear", self.filter),
            None => match self.view() {
                View::Pending => "j/k: select   a: approve   r: reject   /: filter   R: reject all shown   \
                                  PgUp/PgDn: scroll   h: history   q: quit"
                    .into(),
                View::History => "h/Esc: back to pending   q: quit".into(),
            },
        };
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(render::inert_string(&first)),
                Line::from(render::inert_string(&self.message)),
            ])
            .wrap(Wrap { trim: false })
            .block(Block::bordered()),
            area,
        );
    }
}

/// Reads the stores into the app: the pending proposals incrementally (ids, then only
/// the new proposals), the history only while it is shown.
pub fn reload(app: &mut App, op: &Operator) {
    match op.pending_incremental(&mut app.cache) {
        Ok(pending) => app.refresh(pending, protocol::now()),
        Err(e) => app.set_message(format!("cannot read the stores: {e}")),
    }
    if app.view() == View::History {
        match op.history() {
            Ok(history) => app.refresh_history(history),
            Err(e) => app.set_message(format!("cannot read the stores: {e}")),
        }
    }
}

/// Carries out an action; `false` means quit.
pub fn apply(app: &mut App, op: &Operator, action: Action) -> bool {
    match action {
        Action::None => return true,
        Action::Quit => return false,
        Action::Refresh => {}
        Action::Decide { id, status, reason, scope } => match op.decide(&id, status, &reason, scope) {
            Ok(p) => app.set_message(match scope {
                Some(scope) => format!("approved {} ({}), scope {scope}", p.payload.host, p.bottle),
                None => format!("rejected {} ({})", p.payload.host, p.bottle),
            }),
            Err(e) => app.set_message(format!("not decided: {e}")),
        },
        Action::RejectAll { ids, reason } => {
            let (mut done, mut failed) = (0, 0);
            for id in &ids {
                match op.decide(id, Status::Rejected, &reason, None) {
                    Ok(_) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            app.set_message(if failed == 0 {
                format!("rejected {done} proposals")
            } else {
                format!("rejected {done} proposals; {failed} were no longer pending (decided or ended elsewhere)")
            });
        }
    }
    reload(app, op);
    true
}

/// The terminal loop. The stores are opened (and checked) before the terminal is taken over.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the supervise console needs a terminal (stdin and stdout); from a script use \
             `supervise list|approve|reject|history [--json]`"
        );
    }
    let mut op = Operator::open(config)?;
    let mut terminal = ratatui::try_init().context("taking over the terminal")?;
    let result = (|| -> anyhow::Result<()> {
        let mut app = App::default();
        let mut last = None::<Instant>;
        loop {
            if last.is_none_or(|t| t.elapsed() >= REFRESH) {
                // A store the gateway created since is picked up.
                if op.bottles.iter().any(|b| b.store.is_none()) {
                    op = Operator::open(config)?;
                }
                reload(&mut app, &op);
                last = Some(Instant::now());
            }
            terminal.draw(|f| app.render(f))?;
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(key) = event::read()?
            {
                let action = app.on_key(key);
                if !apply(&mut app, &op, action) {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::supervise::{
        SafeValues, Supervisor,
        store::{
            Store,
            tests::{has_unsafe, hostile_proposal, payload, temp_dir},
        },
    };

    /// A config with two supervised bottles: `demo` on a queue directory, `other` on
    /// the default SQLite store; and the gateway's side of both stores.
    pub(crate) fn setup() -> (Config, Arc<dyn Store>, Arc<dyn Store>) {
        let dir = temp_dir("console");
        let text = format!(
            "state_dir: {d}/state\nbottles:\n  - name: demo\n    cgroup: egress/demo\n    supervise:\n      \
             queue_dir: {d}/queue\n  - name: other\n    cgroup: egress/other\n    supervise: {{}}\n",
            d = dir.display()
        );
        let config = Config::parse(&dir.join("gateway.yaml"), &text).unwrap();
        let gateway_store = |i: usize| {
            config.bottles[i]
                .supervise
                .as_ref()
                .unwrap()
                .prepare_store(&config.state_dir, &config.bottles[i].name)
                .unwrap()
        };
        let (demo, other) = (gateway_store(0), gateway_store(1));
        (config, demo, other)
    }

    fn propose(store: &dyn Store, bottle: &str, host: &str, created_at: u64) -> Proposal {
        let mut p = Proposal::new(bottle, payload(host));
        p.created_at = created_at;
        store.write_proposal(&p).unwrap();
        p
    }

    fn press(app: &mut App, op: &Operator, code: KeyCode) -> bool {
        let action = app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
        apply(app, op, action)
    }

    fn type_text(app: &mut App, op: &Operator, text: &str) {
        for c in text.chars() {
            press(app, op, KeyCode::Char(c));
        }
    }

    /// `a`, the reason, `tabs` presses of Tab (the scope), Enter.
    fn approve(app: &mut App, op: &Operator, reason: &str, tabs: usize) {
        press(app, op, KeyCode::Char('a'));
        type_text(app, op, reason);
        for _ in 0..tabs {
            press(app, op, KeyCode::Tab);
        }
        press(app, op, KeyCode::Enter);
    }

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| app.render(f)).unwrap();
        let buf = terminal.backend().buffer();
        buf.content
            .chunks(buf.area.width as usize)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn open(config: &Config) -> (App, Operator) {
        let op = Operator::open(config).unwrap();
        let mut app = App::default();
        reload(&mut app, &op);
        (app, op)
    }

    #[tokio::test]
    async fn a_held_request_is_shown_with_its_payload_and_never_its_value() {
        let (config, demo, _) = setup();
        let value = crate::dlp::Secret::new("ghp_consolesecretvalue0123456789abcdef");
        let sup = Arc::new(Supervisor::new("demo", demo.clone(), Duration::from_secs(30), SafeValues::in_memory()));
        let held = tokio::spawn({
            let (sup, value) = (sup.clone(), value.clone());
            async move { sup.hold(payload("api.upstream.test"), &value).await }
        });
        while demo.pending().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut app, op) = open(&config);
        let text = screen(&app);
        assert!(text.contains("1 pending"), "{text}");
        assert!(text.contains("api.upstream.test") && text.contains("\u{2039}/v1/x\u{203a}"), "{text}");
        assert!(text.contains("GitHub personal access token"), "{text}");
        assert!(text.contains("key ********"), "the redacted context is shown: {text}");
        assert!(text.contains("demo"), "{text}");
        // Approve it through the keys; the held request is released.
        press(&mut app, &op, KeyCode::Char('a'));
        type_text(&mut app, &op, "deploy key");
        assert!(screen(&app).contains("reason: deploy key_"));
        press(&mut app, &op, KeyCode::Enter);
        assert_eq!(held.await.unwrap(), crate::supervise::HoldOutcome::Approved { scope: Scope::Gateway });
        reload(&mut app, &op);
        for view in [screen(&app), {
            press(&mut app, &op, KeyCode::Char('h'));
            screen(&app)
        }] {
            assert!(!view.contains("consolesecretvalue"), "the raw value is on screen: {view}");
        }
    }

    #[test]
    fn a_proposal_full_of_terminal_controls_is_drawn_inert() {
        let (config, demo, _) = setup();
        let p = hostile_proposal("demo");
        demo.write_proposal(&p).unwrap();
        let (mut app, op) = open(&config);
        for view in [screen(&app), {
            op.decide(&p.id, Status::Rejected, "no\x1b[2J", None).unwrap();
            reload(&mut app, &op);
            press(&mut app, &op, KeyCode::Char('h'));
            screen(&app)
        }] {
            assert!(!has_unsafe(&view), "a control, format or bidi character is drawn: {view:?}");
            assert!(view.contains("POST\\r\\x1b[1A"), "the escapes are shown visibly: {view}");
        }
        // The detail pane, with the selection on the hostile proposal.
        let q = hostile_proposal("demo");
        demo.write_proposal(&q).unwrap();
        press(&mut app, &op, KeyCode::Char('h'));
        reload(&mut app, &op);
        let text = screen(&app);
        assert!(!has_unsafe(&text), "{text:?}");
        assert!(text.contains("method   \u{2039}POST\\r\\x1b[1A") && text.contains("\\u{202e}"), "{text}");
    }

    #[test]
    fn approving_with_an_empty_reason_is_refused_and_writes_nothing() {
        let (config, demo, _) = setup();
        let p = propose(&*demo, "demo", "a.test", protocol::now());
        let (mut app, op) = open(&config);
        approve(&mut app, &op, "   ", 0);
        let text = screen(&app);
        assert!(text.contains("a reason is required to approve"), "{text}");
        assert!(matches!(app.prompt(), Some(Prompt::Approve { .. })), "the prompt stays open");
        assert_eq!(demo.read_response(&p.id).unwrap(), None);
        press(&mut app, &op, KeyCode::Esc);
        assert!(app.prompt().is_none());
        assert_eq!(demo.read_response(&p.id).unwrap(), None);
    }

    #[test]
    fn approval_writes_a_response_with_the_reason_and_the_chosen_scope() {
        let (config, demo, other) = setup();
        let older = propose(&*demo, "demo", "old.test", 100);
        let newer = propose(&*other, "other", "new.test", 200);
        let (mut app, op) = open(&config);
        let text = screen(&app);
        assert!(text.find("new.test").unwrap() < text.find("old.test").unwrap(), "newest first: {text}");
        assert_eq!(app.selected().unwrap().id, newer.id);
        // Down to the older one (on the queue directory), approve it for this request only.
        press(&mut app, &op, KeyCode::Char('j'));
        assert_eq!(app.selected().unwrap().id, older.id);
        approve(&mut app, &op, "one-off upload", 1);
        let r = demo.read_response(&older.id).unwrap().expect("a response was written");
        assert_eq!((r.status, r.notes.as_str(), r.scope), (Status::Approved, "one-off upload", Some(Scope::Once)));
        assert!(screen(&app).contains("approved old.test (demo), scope once"));
        // Up, reject the other (SQLite) without a reason.
        press(&mut app, &op, KeyCode::Char('k'));
        press(&mut app, &op, KeyCode::Char('r'));
        press(&mut app, &op, KeyCode::Enter);
        assert_eq!(other.read_response(&newer.id).unwrap().unwrap().status, Status::Rejected);
        assert!(screen(&app).contains("no pending proposals"));
        // Both decisions in the history view.
        press(&mut app, &op, KeyCode::Char('h'));
        let text = screen(&app);
        assert!(text.contains("history (2 decisions)"), "{text}");
        assert!(text.contains("one-off upload") && text.contains("rejected"), "{text}");
        assert!(!press(&mut app, &op, KeyCode::Char('q')), "q quits");
    }

    #[test]
    fn the_screen_follows_proposals_arriving_and_decided_elsewhere() {
        let (config, demo, _) = setup();
        let (mut app, op) = open(&config);
        assert!(screen(&app).contains("no pending proposals"));
        let p = propose(&*demo, "demo", "late.test", protocol::now());
        reload(&mut app, &op);
        assert!(screen(&app).contains("late.test"));
        press(&mut app, &op, KeyCode::Char('r'));
        // Another operator decides first: the prompt closes, and deciding here cannot happen.
        op.decide(&p.id, Status::Approved, "done elsewhere", None).unwrap();
        reload(&mut app, &op);
        assert!(app.prompt().is_none());
        let text = screen(&app);
        assert!(text.contains("no longer pending") && text.contains("no pending proposals"), "{text}");
        assert_eq!(demo.read_response(&p.id).unwrap().unwrap().notes, "done elsewhere");
    }

    /// The screen's rows, and the style of the first cell of `needle` on it.
    fn draw(app: &App, width: u16, height: u16) -> (Vec<String>, ratatui::buffer::Buffer) {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| app.render(f)).unwrap();
        let buf = terminal.backend().buffer().clone();
        let rows = buf
            .content
            .chunks(buf.area.width as usize)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect();
        (rows, buf)
    }

    /// Where `needle` starts on the screen: (row, column in cells).
    fn find(rows: &[String], needle: &str) -> Option<(usize, usize)> {
        rows.iter().enumerate().find_map(|(y, r)| r.find(needle).map(|i| (y, r[..i].chars().count())))
    }

    /// The proposal: a path padded with 1,490 no-break spaces that ends with a
    /// note posing as the gateway's, meant to push the real reason and context away.
    pub(crate) fn padded_proposal(bottle: &str) -> Proposal {
        let mut p = Proposal::new(bottle, payload("api.upstream.test"));
        p.payload.path = format!("/v1/send{}note: known test fixture, safe to approve", "\u{a0}".repeat(1490));
        p.payload.context = "key=******** padding".into();
        p
    }

    #[test]
    fn agent_text_is_marked_cut_and_cannot_push_the_host_and_reason_away() {
        let (config, demo, _) = setup();
        demo.write_proposal(&padded_proposal("demo")).unwrap();
        let (mut app, op) = open(&config);
        let (rows, buf) = draw(&app, 120, 30);
        let text = rows.join("\n");
        // The row: gateway columns first, the agent's path marked and cut with a count.
        let row = rows.iter().find(|r| r.contains("> ")).expect("a selected row");
        assert!(row.contains("api.upstream.test") && row.contains("GitHub personal access token"), "{row}");
        assert!(!text.contains("note:"), "the agent's note is on screen: {text}");
        assert!(text.contains("more characters)"), "no truncation marker: {text}");
        assert!(!text.contains('\u{a0}'), "a raw no-break space is drawn");
        assert!(text.contains("\\u{a0}"), "the no-break spaces are shown as escapes: {text}");
        // Agent text is drawn in its own style, the gateway's is not.
        let (y, x) = find(&rows, "\u{2039}/v1/send").expect("the marked path");
        assert_eq!(buf[(x as u16, y as u16)].fg, ratatui::style::Color::Yellow);
        let (hy, hx) = find(&rows, "host     api.upstream.test").expect("the fixed host line");
        assert_ne!(buf[(hx as u16 + 9, hy as u16)].fg, ratatui::style::Color::Yellow);
        let (ry, _) = find(&rows, "reason   token_patterns").expect("the fixed reason line");
        // Scroll the whole detail: the host and reason stay where they were, the rest of
        // the path (and the note, as the agent's) comes into view.
        let mut seen_note = false;
        for _ in 0..60 {
            press(&mut app, &op, KeyCode::PageDown);
            let (rows, buf) = draw(&app, 120, 30);
            assert_eq!(find(&rows, "host     api.upstream.test").map(|p| p.0), Some(hy), "the host moved");
            assert_eq!(find(&rows, "reason   token_patterns").map(|p| p.0), Some(ry), "the reason moved");
            if let Some((y, x)) = find(&rows, "note:") {
                assert_eq!(buf[(x as u16, y as u16)].fg, ratatui::style::Color::Yellow, "the note is not marked");
                seen_note = true;
            }
            if rows.iter().any(|r| r.contains("context  \u{2039}key=********")) {
                break;
            }
        }
        assert!(seen_note, "scrolling never showed the end of the path");
        let rows = draw(&app, 120, 30).0;
        assert!(rows.iter().any(|r| r.contains("context  \u{2039}key=******** padding\u{203a}")), "{rows:#?}");
    }

    #[test]
    fn a_filter_and_a_bulk_reject_clear_a_flood() {
        let (config, demo, other) = setup();
        let ghosts: Vec<Proposal> =
            (0..5).map(|i| propose(&*demo, "demo", &format!("ghost{i}.flood.test"), 100 + i)).collect();
        let real = propose(&*other, "other", "real.test", 50);
        let (mut app, op) = open(&config);
        press(&mut app, &op, KeyCode::Char('/'));
        type_text(&mut app, &op, "flood");
        press(&mut app, &op, KeyCode::Enter);
        assert_eq!(app.visible().len(), 5);
        assert!(screen(&app).contains("6 pending, 5 shown (filter: flood)"), "{}", screen(&app));
        press(&mut app, &op, KeyCode::Char('R'));
        assert!(screen(&app).contains("reject ALL 5 shown"), "{}", screen(&app));
        type_text(&mut app, &op, "flood");
        press(&mut app, &op, KeyCode::Enter);
        assert!(screen(&app).contains("rejected 5 proposals"), "{}", screen(&app));
        for g in &ghosts {
            assert_eq!(demo.read_response(&g.id).unwrap().unwrap().status, Status::Rejected);
        }
        assert_eq!(other.read_response(&real.id).unwrap(), None, "the real proposal was rejected too");
        press(&mut app, &op, KeyCode::Esc);
        assert_eq!(app.visible().iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [real.id]);
    }

    #[test]
    fn the_console_reads_only_new_proposals() {
        let (config, demo, _) = setup();
        for i in 0..20 {
            propose(&*demo, "demo", &format!("h{i}.test"), 100 + i);
        }
        let (mut app, op) = open(&config);
        assert_eq!(app.proposals_read(), 20);
        for _ in 0..5 {
            reload(&mut app, &op);
        }
        assert_eq!(app.proposals_read(), 20, "a refresh read proposals it already had");
        let p = propose(&*demo, "demo", "new.test", 500);
        reload(&mut app, &op);
        assert_eq!((app.proposals_read(), app.visible().len()), (21, 21));
        demo.close(&p.id, crate::supervise::Closed::Abandoned).unwrap();
        reload(&mut app, &op);
        assert_eq!(app.visible().len(), 20, "a closed proposal stays on screen");
    }

    #[test]
    fn approving_an_abandoned_proposal_says_it_released_nothing() {
        let (config, demo, _) = setup();
        let p = propose(&*demo, "demo", "gone.test", protocol::now());
        let (mut app, op) = open(&config);
        press(&mut app, &op, KeyCode::Char('a'));
        type_text(&mut app, &op, "looks fine");
        // The client goes away while the operator types.
        demo.close(&p.id, crate::supervise::Closed::Abandoned).unwrap();
        press(&mut app, &op, KeyCode::Enter);
        let text = screen(&app);
        assert!(text.contains("abandoned") && text.contains("release nothing"), "{text}");
        assert_eq!(demo.read_response(&p.id).unwrap(), None);
    }

    #[test]
    fn persist_is_refused_unless_the_bottle_allows_it() {
        let (config, demo, _) = setup();
        let p = propose(&*demo, "demo", "p.test", protocol::now());
        let (mut app, op) = open(&config);
        approve(&mut app, &op, "keep it", 2);
        assert!(screen(&app).contains("allow_persist"), "{}", screen(&app));
        assert_eq!(demo.read_response(&p.id).unwrap(), None);
    }
}
