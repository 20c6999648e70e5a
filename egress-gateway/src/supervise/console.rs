//! The operator console (`egress-gateway supervise`): pending proposals of every bottle,
//! newest first, with their payload; approve (a reason is required, the scope is
//! selectable), reject (a reason is optional), the decision history. No "modify".
//!
//! `App` is a pure state machine: keys go in (`on_key`), an `Action` comes out, and
//! `render` draws the state; `apply` carries an action out against the stores, and `run`
//! is the terminal loop, polling the stores every 500 ms so the screen follows proposals
//! that arrive and decisions taken elsewhere.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, List, ListItem, ListState, Paragraph, Wrap},
};

use super::{
    operator::Operator,
    protocol::{self, AuditEntry, Proposal, Scope, Status},
    render,
};
use crate::config::Config;

pub const REFRESH: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Pending,
    History,
}

/// A decision being typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Approve { id: String, reason: String, scope: Scope },
    Reject { id: String, reason: String },
}

/// What the key asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Decide { id: String, status: Status, reason: String, scope: Option<Scope> },
}

#[derive(Debug, Default)]
pub struct App {
    pending: Vec<Proposal>,
    history: Vec<AuditEntry>,
    selected: usize,
    view: Option<View>,
    prompt: Option<Prompt>,
    /// The last result or complaint, shown at the bottom.
    message: String,
    /// Seconds since the epoch, for ages.
    now: u64,
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

    pub fn selected(&self) -> Option<&Proposal> {
        self.pending.get(self.selected)
    }

    /// New data from the stores; the selection follows its proposal if it is still pending.
    pub fn refresh(&mut self, mut pending: Vec<Proposal>, mut history: Vec<AuditEntry>, now: u64) {
        let keep = self.selected().map(|p| p.id.clone());
        pending.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        history.reverse();
        self.pending = pending;
        self.history = history;
        self.now = now;
        self.selected = keep
            .and_then(|id| self.pending.iter().position(|p| p.id == id))
            .unwrap_or(self.selected.min(self.pending.len().saturating_sub(1)));
        // A proposal decided elsewhere (or whose hold ended) cannot be decided here.
        let gone = match &self.prompt {
            Some(Prompt::Approve { id, .. } | Prompt::Reject { id, .. }) => !self.pending.iter().any(|p| &p.id == id),
            None => false,
        };
        if gone {
            self.prompt = None;
            self.message = "that proposal is no longer pending (decided elsewhere, or its hold ended)".into();
        }
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
            (View::Pending, KeyCode::Char('h')) => self.view = Some(View::History),
            (View::History, KeyCode::Char('h') | KeyCode::Esc) => self.view = Some(View::Pending),
            (View::Pending, KeyCode::Up | KeyCode::Char('k')) => self.selected = self.selected.saturating_sub(1),
            (View::Pending, KeyCode::Down | KeyCode::Char('j')) => {
                self.selected = (self.selected + 1).min(self.pending.len().saturating_sub(1));
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
        let reason = match &mut prompt {
            Prompt::Approve { reason, .. } | Prompt::Reject { reason, .. } => reason,
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
        }
    }

    pub fn render(&self, frame: &mut Frame<'_>) {
        let [title, main, detail, footer] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(4), Constraint::Length(9), Constraint::Length(4)])
                .areas(frame.area());
        let heading = match self.view() {
            View::Pending => format!("egress-gateway supervise: {} pending", self.pending.len()),
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

    fn render_pending(&self, frame: &mut Frame<'_>, area: Rect) {
        let items: Vec<ListItem<'_>> = self.pending.iter().map(|p| ListItem::new(p.summary(self.now))).collect();
        let empty = items.is_empty();
        let list = List::new(items)
            .block(Block::bordered().title(if empty { " no pending proposals " } else { " pending, newest first " }))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        let mut state = ListState::default().with_selected((!empty).then_some(self.selected));
        frame.render_stateful_widget(list, area, &mut state);
    }

    fn render_detail(&self, frame: &mut Frame<'_>, area: Rect) {
        let lines = match self.selected() {
            None => vec![Line::from("Held requests appear here as the gateway proposes them.")],
            // Inert text only: the layout is computed on what is drawn, and nothing the
            // agent wrote reaches the terminal as a control sequence.
            Some(p) => {
                let p = p.inert();
                vec![
                    Line::from(format!("id       {}", p.id)),
                    Line::from(format!("bottle   {}   age {}", p.bottle, protocol::format_age(self.now, p.created_at))),
                    Line::from(format!("request  {} {}{}", p.payload.method, p.payload.host, p.payload.path)),
                    Line::from(format!("reason   {}", p.payload.reason)),
                    Line::from(format!("context  {}", p.payload.context)),
                    Line::from(p.justification.clone()),
                ]
            }
        };
        frame.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: false }).block(Block::bordered().title(" proposal ")),
            area,
        );
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
            None => match self.view() {
                View::Pending => "up/down j/k: select   a: approve   r: reject   h: history   q: quit".into(),
                View::History => "h/Esc: back to pending   q: quit".into(),
            },
        };
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(render::inert_string(&first)),
                Line::from(render::inert_string(&self.message)),
            ])
            .block(Block::bordered()),
            area,
        );
    }
}

/// Reads every store into the app.
pub fn reload(app: &mut App, op: &Operator) {
    match op.pending().and_then(|p| Ok((p, op.history()?))) {
        Ok((pending, history)) => app.refresh(pending, history, protocol::now()),
        Err(e) => app.set_message(format!("cannot read the stores: {e}")),
    }
}

/// Carries out an action; `false` means quit.
pub fn apply(app: &mut App, op: &Operator, action: Action) -> bool {
    match action {
        Action::None => {}
        Action::Quit => return false,
        Action::Decide { id, status, reason, scope } => {
            match op.decide(&id, status, &reason, scope) {
                Ok(p) => app.set_message(match scope {
                    Some(scope) => format!("approved {} ({}), scope {scope}", p.payload.host, p.bottle),
                    None => format!("rejected {} ({})", p.payload.host, p.bottle),
                }),
                Err(e) => app.set_message(format!("not decided: {e}")),
            }
            reload(app, op);
        }
    }
    true
}

/// The terminal loop. The stores are opened (and checked) before the terminal is taken over.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let mut op = Operator::open(config)?;
    let mut terminal = ratatui::init();
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
        assert!(text.contains("api.upstream.test/v1/x"), "{text}");
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
            assert!(view.contains("POST\\r\\x1b[1A\\x1b[2K"), "the escapes are shown visibly: {view}");
        }
        // The detail pane, with the selection on the hostile proposal.
        let q = hostile_proposal("demo");
        demo.write_proposal(&q).unwrap();
        press(&mut app, &op, KeyCode::Char('h'));
        reload(&mut app, &op);
        let text = screen(&app);
        assert!(!has_unsafe(&text), "{text:?}");
        assert!(text.contains("request  POST\\r\\x1b[1A") && text.contains("\\u{202e}"), "{text}");
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
