import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { createApiClient } from './api';
import { App } from './App';
import './styles.css';

const root = document.getElementById('root');
if (!root) throw new Error('Missing #root element');

const api = createApiClient();

createRoot(root).render(
  <StrictMode>
    <App api={api} />
  </StrictMode>,
);
